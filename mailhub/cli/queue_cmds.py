"""``mailhub queue list|flush|remove|inject``: inspect and steer the outbound queue.

flush and remove act on the running server at once (through the queue's control
directory, see mailhub/queue/control.py); with no server running they edit the spool.
"""
from __future__ import annotations

import sys
import time

from mailhub.cli.main import CLIError
from mailhub.config import load
from mailhub.queue.control import NoAnswer, request, server_pid
from mailhub.queue.envelope import PENDING, Envelope, Recipient, new_queue_id
from mailhub.queue.smtpwire import to_crlf
from mailhub.queue.spool import Spool


def register(sub, common) -> None:
    q = sub.add_parser("queue", help="the outbound queue").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = q.add_parser("list", parents=[common],
                     help="queued messages: id, sender, recipients, attempts, next try, last error")
    p.set_defaults(func=queue_list)
    p = q.add_parser("flush", parents=[common], help="retry every queued message now")
    p.set_defaults(func=queue_flush)
    p = q.add_parser("remove", parents=[common], help="drop a queued message (no bounce)")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=queue_remove)
    p = q.add_parser("inject", parents=[common],
                     help="queue a message read from stdin for remote delivery")
    p.add_argument("--from", dest="sender", required=True, metavar="SENDER",
                   help='envelope sender ("" for the null sender)')
    p.add_argument("recipients", nargs="+", metavar="RCPT")
    p.add_argument("--dkim-domain", metavar="DOMAIN", help="DKIM-sign with this domain's key")
    p.set_defaults(func=queue_inject)


def _spool(args) -> tuple:
    cfg = load(args.config)
    return cfg, Spool(cfg.data_dir / "queue")


def _when(t: float) -> str:
    if t <= time.time():
        return "now"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def queue_list(args) -> int:
    cfg, spool = _spool(args)
    if not spool.env_dir.is_dir():
        print("queue is empty")
        return 0
    envs, bad = spool.scan()
    for env in envs:
        pending = [r for r in env.recipients if r.state == PENDING]
        print(f"{env.id}  from=<{env.sender}>  size={env.size}  attempts={env.attempts}  "
              f"next={_when(env.next_attempt)}")
        for r in env.recipients:
            print(f"    {r.state:8} <{r.addr}>" + (f"  {r.diag}" if r.diag else ""))
        if env.last_error and pending:
            print(f"    last error: {env.last_error}")
    for name in bad:
        print(f"(unreadable envelope: {name})")
    total = len(envs)
    print(f"{total} message(s) queued" if total else "queue is empty")
    return 0


def queue_flush(args) -> int:
    cfg, spool = _spool(args)
    if server_pid(cfg.data_dir):
        try:
            answer = request(spool.control_dir, "flush")
        except NoAnswer as e:
            raise CLIError(str(e))
        if not answer.get("ok"):
            raise CLIError(answer.get("error", "flush failed"))
        print(f"flushed: {answer.get('count', 0)} message(s) are being retried now")
        return 0
    n = 0
    if spool.env_dir.is_dir():
        envs, _ = spool.scan()
        for env in envs:
            env.next_attempt = 0
            spool.write_envelope(env)
            n += 1
    print(f"{n} message(s) marked for retry; the server is not running, they will be tried "
          "when it starts")
    return 0


def queue_remove(args) -> int:
    cfg, spool = _spool(args)
    qid = args.id.strip().upper()
    if server_pid(cfg.data_dir):
        try:
            answer = request(spool.control_dir, "remove", id=qid)
        except NoAnswer as e:
            raise CLIError(str(e))
        if not answer.get("ok"):
            raise CLIError(answer.get("error", "remove failed"))
    else:
        if not spool.envelope_path(qid).exists():
            raise CLIError(f"no queued message with id {qid}")
        spool.remove(qid, sync=True)
    print(f"removed {qid}")
    return 0


def queue_inject(args) -> int:
    from mailhub.cli.context import open_context

    ctx = open_context(args)
    spool = Spool(ctx.cfg.data_dir / "queue").create()
    data = to_crlf(sys.stdin.buffer.read())
    if not data.strip():
        raise CLIError("no message on stdin")
    prefix = b""
    if args.dkim_domain:
        from mailhub.dkim import DKIMKeys, DKIMSigner

        prefix = DKIMSigner(DKIMKeys(ctx.cfg.data_dir / "dkim")).sign(args.dkim_domain, data)
    qid = new_queue_id()
    spool.write_message(qid, data)
    env = Envelope(id=qid, sender=args.sender, dkim_domain=args.dkim_domain,
                   recipients=[Recipient(r) for r in dict.fromkeys(args.recipients)],
                   prefix=prefix.decode("utf-8", "replace"), size=len(prefix) + len(data))
    spool.write_envelope(env)
    spool.sync_dirs()
    for p in (spool.root, ctx.cfg.data_dir / "dkim"):
        ctx.fix_ownership(p)
    if server_pid(ctx.cfg.data_dir):
        try:
            request(spool.control_dir, "load", id=qid)
        except NoAnswer:
            pass  # picked up at the next start
    print(f"queued {qid}")
    return 0
