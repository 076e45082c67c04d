"""The simulated machines' shell: what a command line exits with, as a small pure model.

No trio, no I/O, no randomness: :func:`exit_code_of` is a function of the command's text alone,
the same on every machine and every run. Every simulated machine is the same Linux server
(hostname ``prod-server``, commands run as root in ``/root``) with a small file system (below)
and a few services. A command line starts on a fresh copy of that machine each time: what one
command changes (``cd``, ``mkdir``, ``rm``, a ``>`` redirection) lasts to the end of its line
only, so ``mkdir /tmp/x && ls /tmp/x`` exits 0 but a later ``ls /tmp/x`` exits 2.

Exit codes (what a GNU/Linux server with bash gives; options are accepted as given):

====  =================================================================================
code  when
====  =================================================================================
0     a known command with its usual arguments: ``ls -la``, ``uptime``, ``whoami``,
      ``df -h``, ``cat /etc/hostname``, ``ps aux``, ``free -m``, ``docker ps``,
      ``journalctl -n 50``, ``systemctl restart nginx``, ``tail -n 20 /var/log/syslog``,
      ``true``, ``echo``, ``cd /var/log``; ``grep`` that selects a line; ``test``/``[ ]``
      that holds; ``systemctl is-active`` of a running unit (``ssh``, ``cron``,
      ``docker``, ...)
1     ``false``; ``cat``/``head``/``tail``/``wc``/``sort``/``stat``/``du``/``df``/``cd``/
      ``chmod``/``cp``/``mv``/``rm``/``source`` of a missing path (``rm -f``: 0), ``cat``
      of a directory, ``mkdir`` of an existing path or in a missing directory (``-p``: 0),
      ``rm -r /``; ``grep`` that selects no line; ``test``/``[ ]`` that does not hold;
      ``which``/``type``/``command -v`` of an unknown name; ``kill`` of an unknown pid;
      a ``<`` or ``>`` redirection that cannot open its file; ``exit`` with too many
      arguments; ``systemctl is-enabled`` of a disabled or unknown unit, ``systemctl
      reload`` of a stopped one, an unknown ``systemctl`` verb
2     ``ls`` of a missing path (GNU ls: a command-line argument it cannot access);
      ``grep`` of a missing file or directory, or with a bad pattern (with ``-q``, a
      selected line still gives 0); ``test``/``[ ]`` that cannot be parsed, ``[``
      without ``]``; ``exit`` with a non-numeric argument; ``printf`` or ``.`` without
      arguments; ``python3`` of a missing script; ``make`` (no Makefile on the
      machine, as make says for ``make test``); a syntax error (an unclosed quote, a
      dangling ``|``/``&&``/``||``, ``;;``); shell syntax outside the model (``if``,
      ``for``, ``while``, ``case``, ``( )``, ``{ }``, a here-document)
3     ``systemctl is-active`` or ``systemctl status`` of a stopped unit (``nginx``),
      ``is-active`` of an unknown one
4     ``systemctl status`` of an unknown unit
5     ``systemctl start``/``stop``/``restart`` of an unknown unit
N     ``exit N`` (modulo 256; a bare ``exit`` repeats the last status)
126   a path to something that is not a program: ``/etc/hostname``, ``/tmp``
127   an unknown program (``nosuchcmd``, ``python``), a missing path (``./deploy.sh``),
      ``bash`` of a missing script
====  =================================================================================

A line is commands joined by ``;``, ``&&``, ``||``, ``|`` (the status of a pipeline is its last
command's: no ``pipefail``) and ``&`` (status 0), each optionally negated with ``!``;
``VAR=value`` prefixes, ``~``, ``$VAR``, ``${VAR}``, ``$?`` and globs over the simulated file
system are expanded (in quoted words too: the model does not keep quoting), ``sudo``, ``env``,
``time``, ``nohup``, ``nice``, ``timeout``, ``command`` and ``bash -c``/``sh -c`` run what they
are given. Commands print what a pipeline needs (``echo hi | grep -q hi`` exits 0, ``cat
/etc/hostname | grep -q prod`` too); ``ps`` lists the machine's processes (nginx is stopped, so
``ps aux | grep -q nginx`` exits 1: the model's ``ps`` does not see the ``grep``). Network
commands (``ping``, ``curl``, ``wget``, ``dig``, ...) and package tools (``apt``, ``dpkg``)
succeed: the model's network always answers.

The file system: ``/etc/{hostname,hosts,os-release,passwd,fstab}``,
``/etc/nginx/nginx.conf``, ``/var/log/{syslog,auth.log,app.log}`` (``app.log`` has INFO and
WARN lines, no ERROR), ``/var/log/nginx/{access,error}.log``, ``/proc/{loadavg,meminfo,
cpuinfo,uptime}``, ``/root/.bashrc``, ``/home/deploy/.bashrc``,
``/srv/releases/current/VERSION`` (there is no ``/srv/releases/next``), ``/tmp``, ``/opt``,
``/dev/null``, and every known program in ``/usr/bin`` (also found as ``/bin/...``).
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

HOSTNAME = "prod-server"
HOME = "/root"

_FILES: dict[str, str] = {
    "/etc/hostname": f"{HOSTNAME}\n",
    "/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n",
    "/etc/os-release": 'PRETTY_NAME="Ubuntu 24.04 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
                       "ID=ubuntu\n",
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
                   "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
                   "deploy:x:1000:1000:deploy:/home/deploy:/bin/bash\n",
    "/etc/fstab": "LABEL=cloudimg-rootfs / ext4 discard,errors=remount-ro 0 1\n",
    "/etc/nginx/nginx.conf": "user www-data;\nworker_processes auto;\npid /run/nginx.pid;\n",
    "/var/log/syslog": "2026-02-14T09:58:01 prod-server systemd[1]: Started cron.service\n"
                       "2026-02-14T09:59:12 prod-server sshd[812]: Accepted publickey for deploy\n"
                       "2026-02-14T10:00:00 prod-server tether-agent[903]: connected\n",
    "/var/log/auth.log": "2026-02-14T09:59:12 prod-server sshd[812]: Accepted publickey for "
                         "deploy\n",
    "/var/log/app.log": "2026-02-14T09:58:30 INFO app started on :8000\n"
                        "2026-02-14T09:59:41 WARN slow request: GET /api/items took 1.2 s\n"
                        "2026-02-14T10:00:02 INFO request served\n",
    "/var/log/nginx/access.log": "",
    "/var/log/nginx/error.log": "",
    "/proc/loadavg": "0.42 0.35 0.30 1/214 2001\n",
    "/proc/meminfo": "MemTotal:        8039732 kB\nMemFree:         2140040 kB\n",
    "/proc/cpuinfo": "processor\t: 0\nmodel name\t: Virtual CPU\n",
    "/proc/uptime": "86400.00 170000.00\n",
    "/root/.bashrc": "export PATH=$PATH:/usr/local/bin\n",
    "/home/deploy/.bashrc": "alias ll='ls -la'\n",
    "/srv/releases/current/VERSION": "1.4.2\n",
    "/dev/null": "",
}
_DIRS = frozenset({"/", "/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/usr/local",
                   "/usr/local/bin", "/tmp", "/opt", "/mnt", "/var", "/var/tmp", "/var/www",
                   "/run", "/dev", "/home", "/srv", "/srv/releases"}
                  | {p.rsplit("/", 1)[0] or "/" for p in _FILES})
_BIN_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")

#: The machine's processes, as ``ps`` lists them: pid, command.
_PROCESSES = ((1, "/sbin/init"), (412, "/lib/systemd/systemd-journald"), (611, "/usr/sbin/cron -f"),
              (812, "sshd: /usr/sbin/sshd -D"), (844, "/usr/bin/containerd"),
              (870, "/usr/bin/dockerd -H fd://"), (903, "/usr/local/bin/tether-agent"),
              (2001, "-bash"))
#: systemd units: running ones, and installed but stopped (and disabled) ones.
_RUNNING = frozenset({"ssh", "sshd", "cron", "docker", "containerd", "systemd-journald",
                      "rsyslog", "tether-agent"})
_STOPPED = frozenset({"nginx"})

_Result = tuple[int, str]


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Machine:
    """One command line's copy of the machine (copied on the first write)."""

    __slots__ = ("cwd", "depth", "dirs", "env", "files", "status")

    def __init__(self) -> None:
        self.files = _FILES
        self.dirs: frozenset[str] | set[str] = _DIRS
        self.cwd = HOME
        self.status = 0
        self.depth = 0
        self.env = {"HOME": HOME, "USER": "root", "LOGNAME": "root", "HOSTNAME": HOSTNAME,
                    "SHELL": "/bin/bash", "LANG": "C.UTF-8",
                    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}

    def path(self, p: str) -> str:
        parts = [] if p.startswith("/") else self.cwd.split("/")
        for part in p.split("/"):
            if part == "..":
                if len(parts) > 1:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/" + "/".join(x for x in parts if x)

    def is_dir(self, p: str) -> bool:
        return p in self.dirs

    def is_program(self, p: str) -> bool:
        folder, _, name = p.rpartition("/")
        return folder in _BIN_DIRS and name in _PROGRAMS and name not in _BUILTINS_ONLY

    def is_file(self, p: str) -> bool:
        return p in self.files or self.is_program(p)

    def exists(self, p: str) -> bool:
        return self.is_dir(p) or self.is_file(p)

    def read(self, p: str) -> str:
        return self.files.get(p, "")

    def children(self, d: str) -> list[str]:
        prefix = d.rstrip("/") + "/"
        names = {q[len(prefix):].split("/", 1)[0] for q in (*self.files, *self.dirs)
                 if q.startswith(prefix) and q != prefix}
        if d in _BIN_DIRS:
            names.update(n for n in _PROGRAMS if n not in _BUILTINS_ONLY)
        return sorted(names)

    def below(self, d: str) -> list[str]:
        """``d`` and every path under it, depth first."""
        out = [d]
        if self.is_dir(d):
            for name in self.children(d):
                out.extend(self.below(d.rstrip("/") + "/" + name))
        return out

    def _own(self) -> None:
        if self.files is _FILES:
            self.files = dict(_FILES)
            self.dirs = set(_DIRS)

    def write(self, p: str, text: str, append: bool = False) -> None:
        self._own()
        self.files[p] = (self.files.get(p, "") if append else "") + text

    def mkdir(self, p: str) -> None:
        self._own()
        assert isinstance(self.dirs, set)
        self.dirs.add(p)

    def remove(self, p: str) -> None:
        self._own()
        assert isinstance(self.dirs, set)
        for q in self.below(p):
            self.files.pop(q, None)
            self.dirs.discard(q)

    def parent_ok(self, p: str) -> bool:
        return self.is_dir(p.rsplit("/", 1)[0] or "/")


# -- parsing ----------------------------------------------------------------------------------

_CONNECTORS = frozenset({";", "&", "&&", "||", "|", "|&"})
_REDIRECTS = frozenset({"<", ">", ">>", ">|", ">&", "&>", "&>>", "<<<", "<>"})
_COMPOUND = frozenset({"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done",
                       "case", "esac", "select", "function", "{", "}", "(", ")", "<<", "<<-"})


class _Syntax(Exception):
    pass


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    words = []
    for word in lexer:  # ValueError: an unclosed quote
        if word.startswith("#"):
            break
        words.append(word)
    return words


def _parse(line: str) -> list[tuple[str, list[list[str]], bool]]:
    """A line as (connector before it, pipeline, run in the background) items; a pipeline is
    a list of commands, a command a list of words."""
    items: list[tuple[str, list[list[str]], bool]] = []
    connector = ";"
    pipeline: list[list[str]] = []
    command: list[str] = []
    for word in _tokens(line):
        if word in _CONNECTORS:
            if not command:
                raise _Syntax(word)
            pipeline.append(command)
            command = []
            if word not in ("|", "|&"):
                items.append((connector, pipeline, word == "&"))
                pipeline, connector = [], ";" if word == "&" else word
        elif word and set(word) <= set(";&|<>") and word not in _REDIRECTS:
            raise _Syntax(word)
        else:
            command.append(word)
    if command:
        pipeline.append(command)
        items.append((connector, pipeline, False))
    elif pipeline or connector in ("&&", "||"):
        raise _Syntax("end of line")
    return items


# -- running ----------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:\{(\w+|\?)\}|(\w+|\?))")


def _expand(m: _Machine, word: str) -> list[str]:
    if word == "~" or word.startswith("~/"):
        word = HOME + word[1:]
    if "$" in word and "$(" not in word:
        word = _VAR.sub(lambda g: m.env.get(g[1] or g[2], "") if (g[1] or g[2]) != "?"
                        else str(m.status), word)
    if word in ("[", "[[", "]", "]]") or not any(c in word for c in "*?["):
        return [word]
    matches = _glob(m, word)
    return matches or [word]


def _glob(m: _Machine, pattern: str) -> list[str]:
    absolute = pattern.startswith("/")
    found = ["/" if absolute else ""]
    for part in (x for x in pattern.split("/") if x):
        step: list[str] = []
        for base in found:
            folder = m.path(base or ".")
            if any(c in part for c in "*?["):
                names = [n for n in m.children(folder)
                         if fnmatch.fnmatchcase(n, part) and not n.startswith(".")]
            elif m.exists(m.path(f"{base}/{part}" if base else part)):
                names = [part]
            else:
                names = []
            step.extend(f"{base.rstrip('/')}/{n}" if base else n for n in names)
        found = step
    return sorted(found)


def _run_line(m: _Machine, line: str) -> _Result:
    try:
        items = _parse(line)
    except (ValueError, _Syntax):  # ValueError: an unclosed quote
        return 2, ""
    out = ""
    for connector, pipeline, background in items:
        if (connector == "&&" and m.status != 0) or (connector == "||" and m.status == 0):
            continue
        try:
            m.status, out = _pipeline(m, pipeline)
        except _Exit as done:
            m.status = done.status
            break
        if background:  # started, not waited for: its own status is not the line's
            m.status, out = 0, ""
    return m.status, out


def _pipeline(m: _Machine, pipeline: list[list[str]]) -> _Result:
    """A pipeline's status is its last command's (no pipefail); ``!`` negates it."""
    negate = pipeline[0][0] == "!"
    if negate:
        pipeline[0] = pipeline[0][1:]
        if not pipeline[0]:
            return 1, ""
    stdin = ""
    status = 0
    for words in pipeline:
        try:
            status, stdin = _simple(m, words, stdin)
        except _Exit as done:
            if len(pipeline) == 1 and not negate:
                raise
            status, stdin = done.status, ""  # in a pipeline, ``exit`` ends its subshell only
    if negate:
        status = int(status == 0)
    return status, stdin


def _simple(m: _Machine, raw: list[str], stdin: str) -> _Result:
    if raw[0] in _COMPOUND or raw[0][:1] in ("(", "{"):
        return 2, ""
    words: list[str] = []
    redirects: list[tuple[str, str]] = []
    k = 0
    while k < len(raw):
        word = raw[k]
        if word in _REDIRECTS or word in ("<<", "<<-"):
            if word in ("<<", "<<-") or k + 1 >= len(raw):
                return 2, ""  # a here-document, or a redirection without a target
            if words and words[-1].isdigit() and len(words[-1]) == 1:
                words.pop()  # ``2>/dev/null``: the digit is a file descriptor
            redirects.append((word, raw[k + 1]))
            k += 2
            continue
        words.extend(_expand(m, word))
        k += 1
    out_to: list[tuple[str, bool]] = []
    for op, target in redirects:
        if op == "<<<":
            stdin = target + "\n"
            continue
        if op == ">&" and target.isdigit():
            continue  # ``2>&1``
        path = m.path(_expand(m, target)[0])
        if op in ("<", "<>"):
            if not m.is_file(path):
                return 1, ""
            stdin = m.read(path)
        else:
            if m.is_dir(path) or not m.parent_ok(path):
                return 1, ""
            if path != "/dev/null":
                m.write(path, "", append=True)
                out_to.append((path, op in (">>", "&>>")))
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        if not words:
            m.env[name] = value
    if not words:
        return 0, ""
    status, out = _command(m, words[0], words[1:], stdin)
    for path, append in out_to:
        m.write(path, out, append=append)
    if out_to:
        out = ""
    return status, out


def _command(m: _Machine, name: str, args: list[str], stdin: str) -> _Result:
    if "/" in name:
        path = m.path(name)
        if m.is_program(path):
            name = path.rsplit("/", 1)[1]
        else:
            return (126 if m.exists(path) else 127), ""
    handler = _PROGRAMS.get(name)
    if handler is None:
        return 127, ""
    return handler(m, args, stdin)


def _options(args: list[str], values: str = "", long_values: tuple[str, ...] = ()
             ) -> tuple[set[str], dict[str, str], list[str]]:
    """Options (single letters, ``--long`` names), their values, and the operands."""
    flags: set[str] = set()
    given: dict[str, str] = {}
    operands: list[str] = []
    k = 0
    while k < len(args):
        a = args[k]
        k += 1
        if a == "--":
            operands.extend(args[k:])
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            flags.add(name)
            if eq:
                given[name] = value
            elif name in long_values and k < len(args):
                given[name] = args[k]
                k += 1
        elif a.startswith("-") and len(a) > 1:
            for j, c in enumerate(a[1:], 1):
                flags.add(c)
                if c in values:
                    if a[j + 1:]:
                        given[c] = a[j + 1:]
                    elif k < len(args):
                        given[c] = args[k]
                        k += 1
                    break
        else:
            operands.append(a)
    return flags, given, operands


# -- the commands -----------------------------------------------------------------------------

def _fixed(text: str = "") -> Callable[[_Machine, list[str], str], _Result]:
    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        return 0, text
    return run


def _ls(m: _Machine, args: list[str], stdin: str) -> _Result:
    flags, _, paths = _options(args, "wIT", ("width", "ignore", "hide"))
    status, lines = 0, []
    for p in paths or ["."]:
        full = m.path(p)
        if m.is_dir(full) and "d" not in flags:
            lines.extend(m.children(full))
        elif m.exists(full):
            lines.append(p)
        else:
            status = 2
    return status, "".join(f"{x}\n" for x in lines)


_FILTER_VALUES = {"head": "nc", "tail": "ncs", "sort": "ktoS", "uniq": "fsw", "cut": "dfcb",
                  "wc": "", "cat": "", "tac": "", "nl": "bsvw", "less": "", "more": "", "zcat": ""}


def _filter(name: str) -> Callable[[_Machine, list[str], str], _Result]:
    values = _FILTER_VALUES[name]

    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        flags, given, paths = _options(args, values, ("lines", "bytes"))
        status, text = 0, ""
        for p in paths or ["-"]:
            if p == "-":
                text += stdin
                continue
            full = m.path(p)
            if m.is_file(full):
                text += m.read(full)
            else:
                status = 1  # missing, or a directory
        lines = text.splitlines(keepends=True)
        count = given.get("n", given.get("lines", "10")).lstrip("+-")
        n = int(count) if count.isdigit() else 10
        if name == "head":
            lines = lines[:n]
        elif name == "tail":
            lines = lines[-n:] if n else []
        elif name == "sort":
            lines = sorted(lines, reverse="r" in flags)
        elif name == "tac":
            lines = lines[::-1]
        elif name == "wc":
            lines = [f"{len(lines)} {len(text.split())} {len(text)}\n"]
        return status, "".join(lines)

    return run


def _grep(mode: str = "") -> Callable[[_Machine, list[str], str], _Result]:
    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        flags, given, operands = _options(args, "efmABCd", ("regexp", "file", "max-count"))
        flags.update(mode)
        patterns = [given[k] for k in ("e", "regexp") if k in given]
        if not patterns:
            if not operands:
                return 2, ""
            patterns = [operands.pop(0)]
        quiet = bool(flags & {"q", "quiet", "silent"})
        recursive = bool(flags & {"r", "R", "recursive"})
        fixed = "F" in flags
        extended = bool(flags & {"E", "P", "extended-regexp", "perl-regexp"})
        try:
            regexes = []
            for p in patterns:
                body = re.escape(p) if fixed else p if extended else _basic(p)
                if flags & {"w", "word-regexp"}:
                    body = rf"\b(?:{body})\b"
                regexes.append(re.compile(
                    body, re.IGNORECASE if flags & {"i", "ignore-case"} else 0))
        except re.error:
            return 2, ""
        invert = bool(flags & {"v", "invert-match"})
        whole = "x" in flags
        sources: list[str] = []
        error = False
        for p in operands or (["."] if recursive else ["-"]):
            full = m.path(p)
            if p == "-":
                sources.append(stdin)
            elif m.is_dir(full) and recursive:
                sources.extend(m.read(q) for q in m.below(full) if m.is_file(q))
            elif m.is_file(full):
                sources.append(m.read(full))
            else:
                error = True  # missing, or a directory without -r
        selected = []
        for text in sources:
            for line in text.splitlines(keepends=True):
                body = line.rstrip("\n")
                hit = any((r.fullmatch(body) if whole else r.search(body)) for r in regexes)
                if hit != invert:
                    selected.append(line)
        if selected and quiet:
            return 0, ""
        if error:
            return 2, ""
        return (0 if selected else 1), ("" if quiet else "".join(selected))

    return run


def _basic(pattern: str) -> str:
    """A basic regular expression (grep's default) as Python's: ``\\(``, ``\\|``, ``\\+``
    ... are the operators, and ``(``, ``|``, ``+`` ... plain characters."""
    out = []
    k = 0
    while k < len(pattern):
        c = pattern[k]
        if c == "\\" and k + 1 < len(pattern):
            nxt = pattern[k + 1]
            out.append(nxt if nxt in "()|+?{}" else c + nxt)
            k += 2
            continue
        out.append("\\" + c if c in "()|+?{}" else c)
        k += 1
    return "".join(out)


def _find(m: _Machine, args: list[str], stdin: str) -> _Result:
    starts = []
    for a in args:
        if a.startswith("-") or a in ("(", ")", "!", ","):
            break
        starts.append(a)
    status = 0
    lines: list[str] = []
    for p in starts or ["."]:
        full = m.path(p)
        if not m.exists(full):
            status = 1
            continue
        lines.extend(p.rstrip("/") + q[len(full.rstrip("/")):] if q != full else p
                     for q in m.below(full))
    return status, "".join(f"{x}\n" for x in lines)


def _paths_exist(values: str = "", need: int = 0, skip: int = 0, empty_ok: bool = True
                 ) -> Callable[[_Machine, list[str], str], _Result]:
    """A command over paths that fails (1) on a missing one: ``stat``, ``du``, ``chmod``."""
    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        _, _, operands = _options(args, values)
        if len(operands) < need or (not operands and not empty_ok):
            return 1, ""
        missing = any(not m.exists(m.path(p)) for p in operands[skip:])
        return int(missing), ""
    return run


def _test(closing: str | None) -> Callable[[_Machine, list[str], str], _Result]:
    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        if closing is not None:
            if not args or args[-1] != closing:
                return 2, ""
            args = args[:-1]
        try:
            return int(not _TestExpr(m, args).evaluate()), ""
        except _Syntax:
            return 2, ""
    return run


class _TestExpr:
    """``test`` expressions: ``!``, ``-a``, ``-o``, ``( )``, file, string and integer tests."""

    UNARY = frozenset("efdsrwxzLhnbcpSgkuOG")
    BINARY = frozenset({"=", "==", "!=", "<", ">", "-eq", "-ne", "-lt", "-le", "-gt", "-ge",
                        "-nt", "-ot", "-ef"})

    def __init__(self, m: _Machine, args: list[str]) -> None:
        self.m = m
        self.args = args
        self.pos = 0

    def evaluate(self) -> bool:
        args = self.args
        if not args:
            return False
        if len(args) == 3 and args[1] in self.BINARY:  # POSIX: three arguments, a binary test
            return self._binary(*args)
        value = self._or()
        if self.pos != len(self.args):
            raise _Syntax(self.args[self.pos])
        return value

    def _peek(self, offset: int = 0) -> str | None:
        k = self.pos + offset
        return self.args[k] if k < len(self.args) else None

    def _next(self) -> str:
        word = self._peek()
        if word is None:
            raise _Syntax("argument expected")
        self.pos += 1
        return word

    def _or(self) -> bool:
        value = self._and()
        while self._peek() == "-o":
            self.pos += 1
            value = self._and() or value
        return value

    def _and(self) -> bool:
        value = self._not()
        while self._peek() == "-a":
            self.pos += 1
            value = self._not() and value
        return value

    def _not(self) -> bool:
        if self._peek() == "!" and self._peek(1) is not None:
            self.pos += 1
            return not self._not()
        return self._primary()

    def _primary(self) -> bool:
        word = self._next()
        if word == "(" and self._peek(1) is not None:
            value = self._or()
            if self._next() != ")":
                raise _Syntax("')' expected")
            return value
        following = self._peek()
        if following in self.BINARY:
            self.pos += 1
            return self._binary(word, following, self._next())
        if len(word) == 2 and word[0] == "-" and word[1] in self.UNARY and following is not None:
            self.pos += 1
            return self._unary(word[1], following)
        return word != ""

    def _unary(self, op: str, arg: str) -> bool:
        m = self.m
        path = m.path(arg) if arg else ""
        if op == "z":
            return arg == ""
        if op == "n":
            return arg != ""
        if op in "er":
            return m.exists(path) if arg else False
        if op == "w":
            return m.exists(path) and not path.startswith("/proc")
        if op == "f":
            return m.is_file(path)
        if op == "d":
            return m.is_dir(path)
        if op == "s":
            return m.is_dir(path) or m.is_program(path) or bool(m.read(path))
        if op == "x":
            return m.is_dir(path) or m.is_program(path)
        return False  # links, devices, pipes, sockets, set-id bits: none in the model

    def _binary(self, left: str, op: str, right: str) -> bool:
        if op in ("=", "=="):
            return left == right
        if op == "!=":
            return left != right
        if op == "<":
            return left < right
        if op == ">":
            return left > right
        if op in ("-nt", "-ot", "-ef"):
            return op == "-ef" and self.m.path(left) == self.m.path(right)
        try:
            a, b = int(left), int(right)
        except ValueError:
            raise _Syntax("integer expression expected") from None
        return {"-eq": a == b, "-ne": a != b, "-lt": a < b, "-le": a <= b, "-gt": a > b,
                "-ge": a >= b}[op]


def _cd(m: _Machine, args: list[str], stdin: str) -> _Result:
    if len(args) > 1:
        return 1, ""
    if args and args[0] == "-":
        return 0, m.cwd + "\n"
    path = m.path(args[0]) if args else HOME
    if not m.is_dir(path):
        return 1, ""
    m.cwd = path
    return 0, ""


def _exit(m: _Machine, args: list[str], stdin: str) -> _Result:
    if len(args) > 1:
        return 1, ""  # bash: too many arguments (and it does not exit)
    if not args:
        raise _Exit(m.status)
    try:
        raise _Exit(int(args[0]) % 256)
    except ValueError:
        raise _Exit(2) from None


def _echo(m: _Machine, args: list[str], stdin: str) -> _Result:
    newline = "\n"
    while args and args[0] in ("-n", "-e", "-E", "-ne", "-en"):
        if "n" in args[0]:
            newline = ""
        args = args[1:]
    return 0, " ".join(args) + newline


def _printf(m: _Machine, args: list[str], stdin: str) -> _Result:
    if not args:
        return 2, ""
    return 0, args[0].replace("\\n", "\n").replace("%s", " ".join(args[1:]))


def _known(name: str) -> bool:
    return name in _PROGRAMS


def _which(m: _Machine, args: list[str], stdin: str) -> _Result:
    _, _, names = _options(args)
    found = [n for n in names if _known(n) and n not in _BUILTINS_ONLY]
    return (0 if names and len(found) == len(names) else 1), "".join(
        f"/usr/bin/{n}\n" for n in found)


def _type(m: _Machine, args: list[str], stdin: str) -> _Result:
    _, _, names = _options(args)
    return (0 if names and all(_known(n) for n in names) else 1), ""


def _command_builtin(m: _Machine, args: list[str], stdin: str) -> _Result:
    if args and args[0] in ("-v", "-V"):
        return _type(m, args[1:], stdin)
    if not args:
        return 0, ""
    return _command(m, args[0], args[1:], stdin)


def _wrapper(values: str = "", skip_operands: int = 0, alone: int = 0
             ) -> Callable[[_Machine, list[str], str], _Result]:
    """``sudo``, ``nice``, ``timeout``, ``time``, ``nohup``: run the command they are given."""
    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        k = 0
        while k < len(args) and args[k].startswith("-") and args[k] != "-":
            option = args[k]
            k += 1
            if option[-1] in values and len(option) == 2:
                k += 1
        k += skip_operands
        if k >= len(args):
            return alone, ""
        return _command(m, args[k], args[k + 1:], stdin)
    return run


def _sudo(m: _Machine, args: list[str], stdin: str) -> _Result:
    if any(a in ("-i", "-s", "-l", "-v", "-k", "-V") for a in args[:1]) and len(args) == 1:
        return 0, ""
    return _wrapper("ugpCDhrt", alone=1)(m, args, stdin)


def _env(m: _Machine, args: list[str], stdin: str) -> _Result:
    k = 0
    while k < len(args) and (args[k].startswith("-") or "=" in args[k]):
        k += 2 if args[k] in ("-u", "-C", "-S") else 1
    if k >= len(args):
        return 0, "".join(f"{n}={v}\n" for n, v in sorted(m.env.items()))
    return _command(m, args[k], args[k + 1:], stdin)


def _shell(m: _Machine, args: list[str], stdin: str) -> _Result:
    if "-c" in args:
        k = args.index("-c") + 1
        if k >= len(args):
            return 2, ""
        if m.depth > 8:
            return 1, ""
        inner = _Machine()
        inner.depth = m.depth + 1
        inner.cwd = m.cwd
        inner.files, inner.dirs = m.files, m.dirs
        status, out = _run_line(inner, args[k])
        return status, out
    _, _, operands = _options(args, "o")
    if operands:
        return (0 if m.is_file(m.path(operands[0])) else 127), ""
    return 0, ""


def _python(m: _Machine, args: list[str], stdin: str) -> _Result:
    _, given, operands = _options(args, "cmWX")
    if "c" in given or "m" in given:
        return 0, ""
    if operands and operands[0] != "-" and not m.is_file(m.path(operands[0])):
        return 2, ""  # can't open file
    return 0, ""


def _make(m: _Machine, args: list[str], stdin: str) -> _Result:
    _, given, _ = _options(args, "fCjIoWl", ("file", "directory", "jobs"))
    folder = m.path(given.get("C", given.get("directory", ".")))
    makefiles = [given[k] for k in ("f", "file") if k in given] or [
        "GNUmakefile", "makefile", "Makefile"]
    found = any(m.is_file(m.path(f if f.startswith("/") else f"{folder}/{f}")) for f in makefiles)
    return (0 if found else 2), ""  # make: *** No rule to make target ... Stop.


def _source(m: _Machine, args: list[str], stdin: str) -> _Result:
    if not args:
        return 2, ""
    return (0 if m.is_file(m.path(args[0])) else 1), ""


def _export(m: _Machine, args: list[str], stdin: str) -> _Result:
    for a in args:
        name, eq, value = a.partition("=")
        if eq:
            m.env[name] = value
    return 0, ""


def _printenv(m: _Machine, args: list[str], stdin: str) -> _Result:
    if not args:
        return _env(m, [], stdin)
    values = [m.env[a] for a in args if a in m.env]
    return (0 if len(values) == len(args) else 1), "".join(f"{v}\n" for v in values)


def _kill(m: _Machine, args: list[str], stdin: str) -> _Result:
    if args and args[0] == "-l":
        return 0, ""
    pids = {str(pid) for pid, _ in _PROCESSES}
    operands = [a for a in args if not a.startswith("-")]
    if "-s" in args or "-n" in args:
        operands = operands[1:]
    if not operands:
        return 2, ""
    return (0 if all(p in pids for p in operands) else 1), ""


def _ps(m: _Machine, args: list[str], stdin: str) -> _Result:
    rows = "".join(f"root {pid:7d} 0.1 0.4 ? Ss 09:58 0:00 {cmd}\n" for pid, cmd in _PROCESSES)
    return 0, "USER PID %CPU %MEM TTY STAT START TIME COMMAND\n" + rows


def _systemctl(m: _Machine, args: list[str], stdin: str) -> _Result:
    _, _, operands = _options(args, "tspHMn", ("type", "state", "property", "host", "lines"))
    if not operands:
        return 0, ""
    verb, units = operands[0], [u.removesuffix(".service") for u in operands[1:]]
    if verb == "is-active":
        return (0 if units and all(u in _RUNNING for u in units) else 3), ""
    if verb == "is-enabled":
        return (0 if units and all(u in _RUNNING for u in units) else 1), ""
    if verb == "is-failed":
        return 1, ""
    if verb == "status":
        if any(u not in _RUNNING | _STOPPED for u in units):
            return 4, ""
        return (3 if any(u in _STOPPED for u in units) else 0), ""
    if verb in ("start", "stop", "restart", "try-restart", "reload-or-restart", "enable",
                "disable", "mask", "unmask", "kill", "reload"):
        if not units:
            return 1, ""
        if any(u not in _RUNNING | _STOPPED for u in units):
            return 5, ""
        return (1 if verb == "reload" and any(u in _STOPPED for u in units) else 0), ""
    if verb in ("list-units", "list-unit-files", "list-timers", "daemon-reload", "show",
                "cat", "--failed", "list-dependencies"):
        return 0, ""
    return 1, ""


def _service(m: _Machine, args: list[str], stdin: str) -> _Result:
    if not args or args[0].startswith("-"):
        return 0, ""
    unit = args[0]
    if len(args) < 2:
        return 1, ""
    return _systemctl(m, [args[1], unit], stdin)


def _mkdir(m: _Machine, args: list[str], stdin: str) -> _Result:
    flags, _, operands = _options(args, "m", ("mode",))
    parents = bool(flags & {"p", "parents"})
    if not operands:
        return 1, ""
    status = 0
    for p in operands:
        full = m.path(p)
        if m.exists(full):
            status = status or int(not (parents and m.is_dir(full)))
            continue
        if not m.parent_ok(full) and not parents:
            status = 1
            continue
        chain = []
        while not m.exists(full):
            chain.append(full)
            full = full.rsplit("/", 1)[0] or "/"
        if not m.is_dir(full):
            status = 1
            continue
        for q in reversed(chain):
            m.mkdir(q)
    return status, ""


def _touch(m: _Machine, args: list[str], stdin: str) -> _Result:
    _, _, operands = _options(args, "dtr", ("date", "reference"))
    if not operands:
        return 1, ""
    status = 0
    for p in operands:
        full = m.path(p)
        if m.exists(full):
            continue
        if not m.parent_ok(full):
            status = 1
            continue
        m.write(full, "", append=True)
    return status, ""


def _rm(m: _Machine, args: list[str], stdin: str) -> _Result:
    flags, _, operands = _options(args)
    force = bool(flags & {"f", "force"})
    recursive = bool(flags & {"r", "R", "recursive"})
    if not operands:
        return (0 if force else 1), ""
    status = 0
    for p in operands:
        full = m.path(p)
        if full == "/" and recursive:
            status = 1  # --preserve-root
        elif not m.exists(full):
            status = status if force else 1
        elif m.is_dir(full) and not (recursive or flags & {"d", "dir"}):
            status = 1
        else:
            m.remove(full)
    return status, ""


def _copy(move: bool) -> Callable[[_Machine, list[str], str], _Result]:
    def run(m: _Machine, args: list[str], stdin: str) -> _Result:
        flags, _, operands = _options(args, "tS", ("target-directory", "suffix"))
        if len(operands) < 2:
            return 1, ""
        *sources, target = operands
        target_path = m.path(target)
        if len(sources) > 1 and not m.is_dir(target_path):
            return 1, ""
        status = 0
        for s in sources:
            full = m.path(s)
            if not m.exists(full) or (m.is_dir(full) and not move
                                      and not flags & {"r", "R", "a", "recursive", "archive"}):
                status = 1
                continue
            dest = (target_path.rstrip("/") + "/" + full.rsplit("/", 1)[1]
                    if m.is_dir(target_path) else target_path)
            if not m.parent_ok(dest):
                status = 1
                continue
            if m.is_dir(full):
                m.mkdir(dest)
            else:
                m.write(dest, m.read(full))
            if move:
                m.remove(full)
        return status, ""
    return run


_PROGRAMS: dict[str, Callable[[_Machine, list[str], str], _Result]] = {
    # always 0, with what a pipeline may read
    "uptime": _fixed(" 10:00:00 up 1 day,  0:00,  1 user,  load average: 0.42, 0.35, 0.30\n"),
    "hostname": _fixed(f"{HOSTNAME}\n"),
    "whoami": _fixed("root\n"),
    "id": _fixed("uid=0(root) gid=0(root) groups=0(root)\n"),
    "date": _fixed("Sat Feb 14 10:00:00 UTC 2026\n"),
    "uname": _fixed("Linux\n"),
    "free": _fixed("               total        used        free\n"
                   "Mem:         8039732     5899692     2140040\n"),
    "df": _paths_exist("tBtx", empty_ok=True),
    "ps": _ps,
    "pwd": lambda m, args, stdin: (0, m.cwd + "\n"),
    "echo": _echo,
    "printf": _printf,
    "true": _fixed(),
    ":": _fixed(),
    "false": lambda m, args, stdin: (1, ""),
    **{name: _fixed() for name in (
        "top", "htop", "who", "w", "last", "sleep", "ip", "ifconfig", "ss", "netstat", "lsblk",
        "lscpu", "nproc", "dmesg", "journalctl", "docker", "hostnamectl", "timedatectl", "lsof",
        "vmstat", "iostat", "mount", "history", "clear", "sync", "set", "unset", "alias",
        "ping", "curl", "wget", "dig", "nslookup", "host", "nc", "apt", "apt-get", "dpkg",
        "watch", "tee", "xargs", "awk", "sed", "tr", "locale", "getent")},
    # over paths
    "ls": _ls,
    **{name: _filter(name) for name in _FILTER_VALUES},
    "grep": _grep(),
    "egrep": _grep("E"),
    "fgrep": _grep("F"),
    "find": _find,
    "stat": _paths_exist("cf", empty_ok=False),
    "du": _paths_exist("dBt"),
    "chmod": _paths_exist(need=2, skip=1),
    "chown": _paths_exist(need=2, skip=1),
    "chgrp": _paths_exist(need=2, skip=1),
    "mkdir": _mkdir,
    "touch": _touch,
    "rm": _rm,
    "cp": _copy(move=False),
    "mv": _copy(move=True),
    "cd": _cd,
    "source": _source,
    ".": _source,
    # tests and names
    "test": _test(None),
    "[": _test("]"),
    "[[": _test("]]"),
    "which": _which,
    "type": _type,
    "command": _command_builtin,
    "export": _export,
    "printenv": _printenv,
    "env": _env,
    # running other commands
    "sudo": _sudo,
    "nohup": _wrapper(alone=1),
    "time": _wrapper(),
    "nice": _wrapper("n"),
    "timeout": _wrapper("sk", skip_operands=1, alone=1),
    "bash": _shell,
    "sh": _shell,
    "python3": _python,
    "make": _make,
    "exit": _exit,
    "kill": _kill,
    # services
    "systemctl": _systemctl,
    "service": _service,
}
#: Shell builtins and keywords: not found as a file in ``/usr/bin``.
_BUILTINS_ONLY = frozenset({"cd", "exit", "source", ".", ":", "export", "set", "unset", "alias",
                            "history", "type", "[[", "command"})


@functools.lru_cache(maxsize=4096)
def run_shell(command: str) -> tuple[int, str]:
    """What ``command`` exits with on a simulated machine, and what it prints."""
    return _run_line(_Machine(), command)


def exit_code_of(command: str) -> int:
    """What a simulated machine's shell exits with for ``command`` (see the module's table)."""
    return run_shell(command)[0]
