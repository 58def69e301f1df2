# faas context driver for Python: runs each request's code in one persistent namespace,
# like a notebook kernel. Requests arrive as JSON lines on fd 3, replies leave on fd 4;
# the code's own output goes to stdout and stderr as usual.
import json, os, sys, traceback

_ns = {"__name__": "__main__", "__builtins__": __builtins__}
_ctl = os.fdopen(3, "r", encoding="utf-8")
_rep = os.fdopen(4, "w", encoding="utf-8", buffering=1)
_rep.write(json.dumps({"ready": True}) + "\n")

import signal as _signal

# An interrupt that lands outside the user's code (a deadline racing the reply) must not
# end the driver: only the code's own run is interrupted.
_signal.signal(_signal.SIGINT, _signal.SIG_IGN)

for _line in _ctl:
    _code = json.loads(_line)["code"]
    _exit = 0
    try:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        exec(compile(_code, "<context>", "exec"), _ns)
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    except SystemExit as _e:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        _exit = _e.code if isinstance(_e.code, int) else (0 if _e.code is None else 1)
    except BaseException:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        _exit = 1
        _t, _v, _tb = sys.exc_info()
        traceback.print_exception(_t, _v, _tb.tb_next)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    _rep.write(json.dumps({"exit_code": _exit}) + "\n")
