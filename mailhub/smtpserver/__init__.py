"""SMTP in: the ESMTP server protocol for the mx, submission and submissions listeners.

``factory.build_factory(ctx, listener_name)`` is the entry point service.py calls. The
package is split so the byte-level parts are pure functions testable without sockets:
``parser`` (command lines, paths, parameters, SASL), ``datastream`` (DATA/BDAT decoding,
header fix-ups), ``spool`` (where the message body goes), ``policy`` (who may send to whom),
``protocol`` (the state machine) and ``factory`` (roles, per-IP limits).
"""
