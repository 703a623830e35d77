"""The server core on its own (no proxy): CANCEL of an INVITE its handler still holds."""

from __future__ import annotations

import pytest

from sipushd.runtime.engine import Engine
from sipushd.runtime.server import ServerCore
from sipushd.sip import Response
from sipushd.sip.transaction import TransactionLayer
from sipushd.testing.ua import SipClient
from sipushd.transport import TransportManager


@pytest.mark.asyncio
async def test_cancel_gets_200_and_the_held_invite_487_with_an_invite_cseq() -> None:
    engine = Engine(TransactionLayer())
    transport = TransportManager(engine.on_message)
    server = ServerCore(engine)
    server.handlers["INVITE"] = lambda request, source, key: None  # hold it, answer nothing
    engine.attach(transport, server)
    listener = await transport.listen("udp", "127.0.0.1", 0)
    try:
        async with await SipClient.connect("udp", (listener.host, listener.port)) as ua:
            invite = ua.build("INVITE", "sip:bob@example.org")
            ua.send(invite)
            cancel = invite.replace(
                method="CANCEL",
                headers=invite.headers.set("CSeq", f"{invite.cseq.seq} CANCEL"),
            )
            ua.send(cancel)
            finals: list[Response] = [await ua.final_response(), await ua.final_response()]
    finally:
        engine.close()
        await transport.close()
    by_method = {r.cseq.method: r.status for r in finals}
    assert by_method == {"CANCEL": 200, "INVITE": 487}
