"""A Serve request router that sends each request to the replica the scheduler granted it.

Routing choice. The scheduler actor grants a *specific* replica: the one the core's fit rule picks
from the replicas' reports (`driftsched.core.placement`). The ingress passes that replica's id as the
``target_replica`` keyword of the streaming call, and this router ranks only that replica. So a request
is never sent to a replica without capacity, and the policy's order is the order work reaches the
engines — Serve's own queueing never reorders it. (The alternative — default power-of-two routing
with replicas' ``max_ongoing_requests`` equal to their slots — also never overfills a replica, but it
hides which replica got the work, so the scheduler could not account capacity per replica.)

If the granted replica is not (or no longer) among the candidates, the router returns no choice and
backs off; the ingress bounds that wait with its own deadline and answers 503, releasing the grant.
Replicas' ``max_ongoing_requests`` is set a little above their engine slots, as a safety net only.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


class GrantedReplicaRouter(RequestRouter):
    """Ranks exactly the replica named by the request's ``target_replica`` keyword."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        target = pending_request.kwargs.get("target_replica") if pending_request is not None else None
        if target is None:  # not a scheduled call (e.g. a health probe): any replica will do
            return [candidate_replicas]
        for replica in candidate_replicas:
            if replica.replica_id.unique_id == target:
                return [[replica]]
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        return []
