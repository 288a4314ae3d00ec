"""Python client of the clinic notification service.

    from clinic_notify import NotifyClient
    with NotifyClient("http://127.0.0.1:7556", api_key) as client:
        client.send_custom("p-1001", "Your results are ready", "Log in to read them.")

``AsyncNotifyClient`` has the same calls for asyncio, and ``listen``:

    async for notification in client.listen("p-1001", token):
        ...
"""

from clinic_notify.client import AsyncNotifyClient, NotifyClient
from clinic_notify.errors import NotifyError

__all__ = ["AsyncNotifyClient", "NotifyClient", "NotifyError"]
__version__ = "0.2.0"
