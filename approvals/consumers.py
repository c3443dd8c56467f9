"""The live approval queue: every open queue page joins one group and hears each change."""

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.roles import ADMIN, APPROVER, has_role

# Every approver's open queue page.
QUEUE_GROUP = "approvals-queue"
# Close code for a socket whose user may not decide (4000-4999 are the application's).
NOT_ALLOWED = 4403


def approval_group(approval_id: int) -> str:
    """The calls waiting for this one request (see waiting.py)."""
    return f"approval-{approval_id}"


@database_sync_to_async
def may_decide(user: Any) -> bool:
    return has_role(user, ADMIN, APPROVER)


class ApprovalQueueConsumer(AsyncJsonWebsocketConsumer):
    """Pushes `approval.created`, `approval.decided` and `approval.expired` to the page.

    The page only listens; decisions are ordinary POSTs, so they work without a socket.
    """

    async def connect(self) -> None:
        if not await may_decide(self.scope.get("user")):
            await self.close(code=NOT_ALLOWED)
            return
        await self.channel_layer.group_add(QUEUE_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(QUEUE_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Nothing to say to the server over the socket."""

    async def approval_created(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": event["type"], "approval": event["approval"]})

    async def approval_decided(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": event["type"], "approval": event["approval"]})

    async def approval_expired(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": event["type"], "approval": event["approval"]})
