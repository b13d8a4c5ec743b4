# DriftSched image for KubeRay on NVIDIA L4 (GKE g2 nodes): Ray's official CUDA image plus the project
# with its `vllm` extra. Every Ray pod (head, CPU and L4 workers) runs this same image.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT_ID/driftsched/driftsched:0.1.0 .
#
# The pins must match pyproject.toml (ray[serve]==RAY_VERSION, the vllm extra's vllm==VLLM_VERSION,
# requires-python) and k8s/render.py's RAY_VERSION; tests/test_k8s.py checks all of them.
# CUDA_TAG picks the image's CUDA user space; vLLM's PyTorch wheels bring their own CUDA libraries, so
# what matters on the node is a driver new enough for them (GKE: gpu-driver-version=latest).
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG CUDA_TAG=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}

ARG RAY_VERSION=2.60.0
ARG VLLM_VERSION=0.32.0

WORKDIR /home/ray/driftsched

# Dependencies first (this layer is reused while only the code changes): the project's metadata is
# enough for pip to resolve them. Ray is pinned again so that no dependency can move it.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p driftsched policies serve_app deployments \
    && pip install --no-cache-dir ".[vllm]" "ray[serve]==${RAY_VERSION}" "vllm==${VLLM_VERSION}" \
    && pip uninstall -y driftsched

# The code (what the Serve app imports on every node: serve_app.app:build_app and its packages).
COPY --chown=ray:users driftsched ./driftsched
COPY --chown=ray:users policies ./policies
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users deployments ./deployments
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import serve_app.app, vllm, ray; assert ray.__version__ == '${RAY_VERSION}'"

# Model weights are downloaded at replica start into the pod's cache (HF_TOKEN from a Secret).
ENV HF_HOME=/home/ray/.cache/huggingface
