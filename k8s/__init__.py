"""KubeRay manifests for GKE L4 node pools and the generator that writes them from config.l4.yaml."""
