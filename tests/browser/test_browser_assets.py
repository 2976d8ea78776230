"""How the dashboard's pages and files are served: versioned URLs cached for a year,
pages revalidated, ETags, a content security policy, and nothing outside the folders."""

import re

import pytest

from errand_api.dashboard.assets import REPO_CLIENT_DIR

from browser_support import DevServer

pytestmark = pytest.mark.e2e


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'"(/dashboard/static/[0-9a-f]{12}/[^"]+)"', html)


def test_pages_are_revalidated_and_carry_a_content_security_policy(
    dev_server: DevServer,
) -> None:
    for path in ("/admin", "/demo"):
        page = dev_server.http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        csp = page.headers["content-security-policy"]
        assert re.search(r"script-src 'self' 'sha256-[A-Za-z0-9+/=]+'", csp)
        assert "frame-ancestors 'none'" in csp
        again = dev_server.http.get(path, headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
    assert dev_server.http.get("/admin/", follow_redirects=False).status_code == 308
    assert "/admin" not in dev_server.http.get("/openapi.json").json()["paths"]


def test_versioned_files_are_cached_for_a_year_and_old_versions_revalidate(
    dev_server: DevServer,
) -> None:
    urls = _asset_urls(dev_server.http.get("/admin").text)
    assert any(u.endswith("/css/errand.css") for u in urls)
    assert any(u.endswith("/vendor/socket.io.esm.min.js") for u in urls)
    for url in urls:
        resp = dev_server.http.get(url)
        assert resp.status_code == 200, url
        assert resp.headers["cache-control"] == "public, max-age=31536000, immutable"
        again = dev_server.http.get(url, headers={"If-None-Match": resp.headers["etag"]})
        assert again.status_code == 304
    script = next(u for u in urls if u.endswith("socket.io.esm.min.js"))
    assert dev_server.http.get(script).headers["content-type"].startswith("text/javascript")
    stale = re.sub(r"/static/[0-9a-f]{12}/", "/static/000000000000/", script)
    assert dev_server.http.get(stale).headers["cache-control"] == "no-cache"


def test_nothing_outside_the_dashboard_folders_is_served(dev_server: DevServer) -> None:
    base = "/dashboard/static/000000000000/"
    for path in ("..%2F..%2Fmain.py", "%2E%2E/assets.py", ".hidden", "js%2F..%2F..%2Frouter.py"):
        resp = dev_server.http.get(base + path)
        assert resp.status_code == 404, path
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_the_javascript_client_is_served_from_the_repository(dev_server: DevServer) -> None:
    resp = dev_server.http.get("/dashboard/static/000000000000/client/index.js")
    if (REPO_CLIENT_DIR / "index.js").exists():
        assert resp.status_code == 200
        assert "watchJob" in resp.text
    else:
        assert resp.status_code == 503
        assert "clients/js/src" in resp.json()["detail"]
