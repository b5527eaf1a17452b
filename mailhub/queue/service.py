"""build_queue_service(ctx): the outbound queue as a twistd service; sets ``ctx.queue``."""
from __future__ import annotations

import os

from twisted.application import service
from twisted.logger import Logger

from mailhub.dkim import DKIMKeys, DKIMSigner
from mailhub.dns import MailResolver
from mailhub.queue.control import ControlPoller, pid_path
from mailhub.queue.manager import OutboundQueue
from mailhub.queue.routing import Router
from mailhub.queue.spool import Spool

log = Logger(namespace="mailhub.queue")


class QueueService(service.Service):
    name = "outbound-queue"

    def __init__(self, queue: OutboundQueue, poller: ControlPoller, data_dir):
        self.queue = queue
        self.poller = poller
        self.data_dir = data_dir

    def startService(self):
        super().startService()
        self.queue.start()
        self.poller.start()
        p = pid_path(self.data_dir)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{os.getpid()}\n")

    def stopService(self):
        super().stopService()
        self.poller.stop()
        try:
            pid_path(self.data_dir).unlink()
        except OSError:
            pass
        return self.queue.stop()


def build_queue(ctx) -> OutboundQueue:
    cfg = ctx.cfg
    spool = Spool(cfg.data_dir / "queue")  # created at start, after twistd --uid
    router = Router(cfg, MailResolver.from_config(cfg), ctx.reactor)
    signer = DKIMSigner(DKIMKeys(cfg.data_dir / "dkim"), log=log)
    return OutboundQueue(cfg, ctx.reactor, spool, router, signer=signer, mda=ctx.mda,
                         directory=ctx.directory)


def build_queue_service(ctx):
    queue = build_queue(ctx)
    ctx.queue = queue
    poller = ControlPoller(queue, queue.spool.control_dir, ctx.reactor)
    return QueueService(queue, poller, ctx.cfg.data_dir)
