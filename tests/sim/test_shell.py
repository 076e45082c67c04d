"""The simulated machines' shell (``tether.sim._shell``): a pure model of what a command line
exits with. The commands the contract, the README and the docs show succeed; an unknown
program exits 127 as in a real shell; every rule of the module's exit-code table holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tether.sim import SHELL, Act, Kind, exit_code_of, plan_fleet
from tether.sim import _shell as shell
from tether.sim._behaviour import _COMMANDS

ROOT = Path(__file__).resolve().parents[2]

#: The contract's history example (``ls -la``, ``cat /etc/hostname``, both exit code 0) and the
#: everyday commands the README, the docs and the tests use.
EVERYDAY = [
    "ls -la", "cat /etc/hostname", "uptime", "df -h", "df -h /", "whoami", "hostname", "id",
    "ls", "ls /var/log", "pwd", "date", "uname -a", "ps aux", "free -m", "docker ps",
    "journalctl -n 50", "systemctl restart nginx", "systemctl status ssh",
    "tail -n 20 /var/log/syslog", "head -n 5 /var/log/app.log", "cat /etc/os-release",
    "echo hello", "true", "ls -la /etc /var/log", "du -sh /var/log", "wc -l /etc/passwd",
    "grep root /etc/passwd", "sudo systemctl restart nginx", "env", "which docker",
    "ping -c 1 8.8.8.8", "curl -s http://localhost:8000/health", "apt list --installed",
    "cd /var/log && ls -la", "uptime; df -h", "rm -rf /tmp/cache", "mkdir -p /tmp/x",
]


@pytest.mark.parametrize("command", EVERYDAY)
def test_everyday_commands_succeed(command):
    assert exit_code_of(command) == 0


@pytest.mark.parametrize("command", [
    "nosuchcmd", "python", "kubectl get pods", "./deploy.sh", "/opt/app/bin/start",
    "bash missing.sh", "echo hi | nosuchcmd", "FOO=1 nosuchcmd", "sudo nosuchcmd",
])
def test_an_unknown_program_exits_127(command):
    assert exit_code_of(command) == 127


#: Every rule of the module's table, with the code it gives.
RULES = [
    # 1
    ("false", 1), ("cat /nonexistent", 1), ("cat /etc", 1), ("head /var/log/app.log.1", 1),
    ("tail -n 5 /nonexistent", 1), ("wc -l /nonexistent", 1), ("stat /nonexistent", 1),
    ("du -sh /nonexistent", 1), ("df -h /nonexistent", 1), ("cd /nonexistent", 1),
    ("chmod 644 /nonexistent", 1), ("cp /nonexistent /tmp", 1), ("mv /nonexistent /tmp", 1),
    ("rm /nonexistent", 1), ("rm -f /nonexistent", 0), ("rm -rf /", 1), ("rm /tmp", 1),
    ("mkdir /tmp", 1), ("mkdir /a/b", 1), ("mkdir -p /a/b", 0), ("source /nonexistent", 1),
    ("grep -q ERROR /var/log/app.log", 1), ("grep -q WARN /var/log/app.log", 0),
    ("grep -c ERROR /var/log/app.log", 1), ("test -d /srv/releases/next", 1),
    ("test -d /srv/releases/current", 0), ("[ -f /etc/hostname ]", 0),
    ("[ -e /nonexistent ]", 1), ("[ ! -e /nonexistent ]", 0), ('[ -z "" ]', 0),
    ("[ 2 -gt 1 ]", 0), ("[ 1 -gt 2 ]", 1), ("[ a = b ]", 1), ("test", 1),
    ("which nosuchcmd", 1), ("type nosuchcmd", 1), ("command -v nosuchcmd", 1),
    ("command -v ls", 0), ("kill 4242", 1), ("kill 812", 0), ("cat < /nonexistent", 1),
    ("echo x > /nonexistent/file", 1), ("exit 1 2", 1), ("systemctl is-enabled nginx", 1),
    ("systemctl reload nginx", 1), ("systemctl frobnicate nginx", 1),
    # 2
    ("ls /nonexistent", 2), ("ls -la /srv/releases/next", 2), ("ls /etc /nonexistent", 2),
    ("grep x /nonexistent", 2), ("grep x /etc", 2), ("grep -E 'a(' /etc/hosts", 2),
    ("grep", 2), ("grep -q root /etc/passwd /nonexistent", 0),
    ("grep root /etc/passwd /nonexistent", 2), ("test 1 -eq a", 2), ("[ -d /tmp", 2),
    ("[ a b ]", 2), ("exit abc", 2), ("printf", 2), (".", 2), ("python3 missing.py", 2),
    ("make test", 2), ("make", 2), ("touch Makefile && make", 0),
    ('echo "unclosed', 2), ("ls |", 2), ("uptime &&", 2), ("|| uptime", 2), ("a ;; b", 2),
    ("if true; then uptime; fi", 2), ("for f in a b; do echo $f; done", 2), ("(cd /tmp)", 2),
    ("{ uptime; }", 2), ("cat <<EOF", 2),
    # 3, 4, 5
    ("systemctl is-active nginx", 3), ("systemctl status nginx", 3),
    ("systemctl is-active nosuchunit", 3), ("systemctl is-active ssh", 0),
    ("systemctl status nosuchunit", 4), ("systemctl restart nosuchunit", 5),
    ("systemctl start nosuchunit.service", 5), ("service nginx status", 3),
    # N
    ("exit 3", 3), ("exit 0", 0), ("exit 300", 44), ("exit -1", 255), ("false; exit", 1),
    ("exit 7; uptime", 7), ("exit 3 | true", 0), ("bash -c 'exit 4'", 4),
    # 126, 127
    ("/etc/hostname", 126), ("/tmp", 126), ("/usr/bin/uptime", 0), ("/bin/ls -la", 0),
    ("nosuchcmd", 127), ("bash missing.sh", 127),
    # lines: ; && || | & ! and expansions
    ("false; uptime", 0), ("uptime; false", 1), ("false && uptime", 1), ("false || uptime", 0),
    ("true || false", 0), ("false && uptime || echo fallback", 0), ("echo hi | grep -q hi", 0),
    ("echo hi | grep -q bye", 1), ("false | true", 0), ("true | false", 1),
    ("cat /etc/hostname | grep -q prod-server", 0), ("ps aux | grep -q sshd", 0),
    ("ps aux | grep -q nginx", 1), ("false &", 0), ("false & false", 1), ("! false", 0),
    ("! true", 1), ("ls /nonexistent 2>/dev/null || echo missing", 0),
    ("cd /var/log && cat app.log", 0), ("cd /var/log && cat syslog.1", 1),
    ("mkdir /tmp/x && ls /tmp/x", 0), ("echo hi > /tmp/f && grep -q hi /tmp/f", 0),
    ("cat ~/.bashrc", 0), ("ls $HOME", 0), ("ls /var/log/*.log", 0), ("ls /var/log/*.gz", 2),
    ("false; echo $? | grep -q 1", 0), ("uptime # and a comment", 0), ("", 0),
]


@pytest.mark.parametrize(("command", "code"), RULES)
def test_exit_code_rules(command, code):
    assert exit_code_of(command) == code


def test_every_code_is_in_the_docstring_table():
    lines = shell.__doc__.splitlines()
    rules = [k for k, line in enumerate(lines) if line.startswith("====  ====")]
    assert len(rules) == 3  # above the header, below it, below the table
    documented = {m[1] for line in lines[rules[1] + 1:rules[2]]
                  if (m := re.match(r"(\d+|N)\s", line))}
    assert documented == {"0", "1", "2", "3", "4", "5", "N", "126", "127"}
    assert {str(code) for _, code in RULES} | {"N"} >= documented - {"N"}


def test_pure_and_deterministic():
    """No state survives a command line: each starts on the same machine."""
    assert exit_code_of("mkdir /tmp/made && test -d /tmp/made") == 0
    assert exit_code_of("test -d /tmp/made") == 1
    assert exit_code_of("rm /etc/hostname; cat /etc/hostname") == 1
    assert exit_code_of("cat /etc/hostname") == 0
    assert exit_code_of("cd /var/log; pwd | grep -q /var/log") == 0
    assert exit_code_of("pwd | grep -q /root") == 0
    shell.run_shell.cache_clear()
    first = [exit_code_of(c) for c, _ in RULES]
    shell.run_shell.cache_clear()
    assert first == [exit_code_of(c) for c, _ in RULES]
    assert shell.run_shell("cat /etc/hostname") == (0, "prod-server\n")


def test_plans_use_the_shell():
    """Operators' commands and the commands agents report carry the shell's exit codes, some
    of them not 0."""
    assert all(exit_code_of(c) == code for c, code in SHELL.items())
    assert {0, 1, 2, 3} <= set(SHELL.values())
    assert {exit_code_of(c) for c in _COMMANDS} >= {0, 1, 2, 3}
    reported = [s for p in plan_fleet(200, 600, weights={Kind.COMMANDS: 1}, seed=3)
                for s in p.script if s.act is Act.COMMAND]
    assert reported and all(s.exit_code == exit_code_of(s.command) for s in reported)
    assert {s.exit_code for s in reported} >= {0, 1}


def _documented_examples() -> list[tuple[str, int]]:
    """``{"command": ..., "exit_code": N}`` objects shown in README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not path.exists():
            continue
        text = path.read_text()
        for match in re.finditer(r'"command":\s*("(?:[^"\\]|\\.)*")[^{}]*?"exit_code":\s*(\d+)',
                                 text):
            found.append((json.loads(match[1]), int(match[2])))
    return found


def test_the_docs_examples_give_the_codes_they_show():
    """What the README and the docs show a command exiting with, a simulated machine gives."""
    wrong = [(c, code, exit_code_of(c)) for c, code in _documented_examples()
             if exit_code_of(c) != code]
    assert wrong == []
