"""The scheduling core: plain Python, no Ray and no vLLM.

Requests are classified, their output tokens estimated (with drift correction), admitted against tenant
quotas, queued per tenant and handed out by a pluggable policy. The simulator and the Ray Serve shells
both drive these same objects.
"""
