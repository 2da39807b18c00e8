"""`grace-hpc status --web`: where the dashboard is, and the SSH tunnel to reach it from a laptop."""

from __future__ import annotations

from grace_hpc.cli.status import WebAccess, web_access
from tests.support.cli import grace, grace_json


def test_a_router_on_this_machine_seen_from_this_machine_needs_no_tunnel():
    assert web_access("http://127.0.0.1:8000/v1", this_host="login1", user="ada", over_ssh=False) == WebAccess(
        "http://127.0.0.1:8000/ui/", None)


def test_over_ssh_the_tunnel_goes_through_this_host_to_the_router():
    on_login = web_access("http://127.0.0.1:8000/v1", this_host="login1.hpc.example", user="ada", over_ssh=True)
    assert on_login == WebAccess("http://127.0.0.1:8000/ui/", "ssh -N -L 8000:127.0.0.1:8000 ada@login1.hpc.example")
    on_node = web_access("http://gpu017:8123", this_host="login1", user="ada", over_ssh=False)
    assert on_node == WebAccess("http://127.0.0.1:8123/ui/", "ssh -N -L 8123:gpu017:8123 ada@login1")
    behind_prefix = web_access("http://[fd00::7]:9000/grace/v1", this_host="login1", user="ada", over_ssh=False,
                               local_port=18000)
    assert behind_prefix == WebAccess("http://127.0.0.1:18000/grace/ui/", "ssh -N -L 18000:[fd00::7]:9000 ada@login1")


def test_status_web_prints_the_url_without_contacting_anything(tmp_path):
    printed = grace_json(tmp_path, "status", "--web", "--router", "http://127.0.0.1:8000/v1")
    assert printed["url"] == "http://127.0.0.1:8000/ui/"
    plain = grace(tmp_path, "status", "--web")
    assert plain.returncode == 1 and "--router URL or set $GRACE_ROUTER_URL" in plain.stderr
