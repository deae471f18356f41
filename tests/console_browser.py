#!/usr/bin/python3
"""Drives the tenantgate console in a real headless Chromium (Selenium +
chromedriver), for tests/console.rs. Each finished step prints `STEP <name>`;
any failure exits non-zero with the page's text and a screenshot.

Run by the Rust test with Debian's /usr/bin/python3 (python3-selenium)."""

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 30


def attr_of_rows(d, selector, attr):
    """`attr` of every row matching `selector`, read in one script call (no
    stale references while the page refreshes)."""
    return d.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(r => r.getAttribute(arguments[1]));",
        selector, attr)


def step(name, detail=""):
    print(f"STEP {name} {detail}".rstrip(), flush=True)


def parse():
    p = argparse.ArgumentParser()
    # "main": the whole tour; "retry": sign in and retry a failing order.
    p.add_argument("--flow", choices=["main", "retry"], default="main")
    for a in ["admin", "token", "domain", "screenshots"]:
        p.add_argument("--" + a, required=True)
    for a in ["proxy", "tenant-token", "find", "hot", "hotter", "rollback", "dns-admin", "txt-name", "txt-value",
              "markup", "limited"]:
        p.add_argument("--" + a, default="")
    a = p.parse_args()
    if a.flow == "main":
        missing = [k for k, v in vars(a).items() if v == ""]
        if missing:
            p.error("the main flow needs " + ", ".join(missing))
    return a


def browser():
    o = webdriver.ChromeOptions()
    o.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]:
        o.add_argument(flag)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=o)
    d.set_page_load_timeout(WAIT)
    return d


def set_txt(dns_admin, name, value):
    """Creates the ownership record on the test's DNS server (challtestsrv)."""
    body = json.dumps({"host": name.rstrip(".") + ".", "value": value}).encode()
    req = urllib.request.Request(dns_admin + "/set-txt", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200, r.status


def burst(proxy, host, n):
    """`n` requests in a row for `host`; the statuses."""
    h, port = proxy.rsplit(":", 1)
    conn = http.client.HTTPConnection(h, int(port), timeout=5)
    out = []
    for i in range(n):
        conn.request("GET", f"/burst/{i}?secret=not-kept", headers={"Host": host})
        r = conn.getresponse()
        r.read()
        out.append(r.status)
    conn.close()
    return out


def sign_in(d, wait, args):
    d.get(args.admin + "/console/")
    wait.until(EC.visibility_of_element_located((By.ID, "token")))
    d.find_element(By.ID, "token").send_keys(args.token)
    d.find_element(By.ID, "signin-button").click()
    wait.until(EC.visibility_of_element_located((By.ID, "overview-cards")))


def retry_flow(args):
    """Domains page: the failing order's Retry button clears its backoff."""
    d = browser()
    wait = WebDriverWait(d, WAIT)
    shot = lambda name: d.save_screenshot(os.path.join(args.screenshots, name + ".png"))
    try:
        sign_in(d, wait, args)
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=domains]").click()
        row = wait.until(EC.presence_of_element_located(
            (By.XPATH, f"//table[@id='failing-certs']//tr[td[1][text()='{args.domain}']]")))
        before = int(row.find_elements(By.TAG_NAME, "td")[1].text)
        assert before >= 1, row.text
        row.find_element(By.CSS_SELECTOR, "button.retry").click()
        wait.until(lambda _: "Order of " + args.domain + " retried" in d.find_element(By.ID, "retry-result").text)
        text = d.find_element(By.ID, "retry-result").text
        # The backoff is cleared: the next attempt is now, not an hour away.
        assert "next attempt" in text, text
        shot("domains-retry")
        step("retried", text)
    except Exception as e:
        shot("failure-retry")
        print("FAILED:", repr(e), file=sys.stderr)
        try:
            print(d.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
        except Exception:
            pass
        raise
    finally:
        d.quit()


class Load:
    """Requests for one tenant's host on the proxy listener, from a thread."""

    def __init__(self, proxy, host):
        self.proxy, self.host = proxy, host
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        h, port = self.proxy.rsplit(":", 1)
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(h, int(port), timeout=5)
                conn.request("GET", "/", headers={"Host": self.host})
                conn.getresponse().read()
                self.sent += 1
            except Exception:
                conn = None
                time.sleep(0.05)

    def end(self):
        self.stop.set()
        self.thread.join(10)


def main():
    args = parse()
    d = browser()
    wait = WebDriverWait(d, WAIT)
    shot = lambda name: d.save_screenshot(os.path.join(args.screenshots, name + ".png"))
    loads = []
    try:
        # Sign in: a wrong token first, then the operator's.
        d.get(args.admin + "/console/")
        wait.until(EC.visibility_of_element_located((By.ID, "token")))
        shot("signin")
        d.find_element(By.ID, "token").send_keys("not-a-token")
        d.find_element(By.ID, "signin-button").click()
        wait.until(lambda _: "not valid" in d.find_element(By.ID, "signin-error").text)
        d.find_element(By.ID, "token").clear()
        d.find_element(By.ID, "token").send_keys(args.token)
        d.find_element(By.ID, "signin-button").click()
        wait.until(EC.visibility_of_element_located((By.ID, "overview-cards")))
        wait.until(lambda _: "10002" in d.find_element(By.ID, "card-tenants").text)
        assert "operator" in d.find_element(By.ID, "whoami").text
        # The token lives in this tab's sessionStorage, never in a cookie.
        assert d.execute_script("return sessionStorage.getItem('tenantgate.token')") == args.token
        assert d.get_cookies() == [], d.get_cookies()
        step("signed-in")
        # The replicas table: a single node lists itself.
        wait.until(lambda _: attr_of_rows(d, "#replica-table tbody tr", "data-replica"))
        assert len(attr_of_rows(d, "#replica-table tbody tr", "data-replica")) == 1
        assert "(this node)" in d.find_element(By.ID, "replica-table").text
        assert "Single node" in d.find_element(By.ID, "replicas-info").text
        step("replicas")
        time.sleep(0.5)
        shot("overview")

        # Find a tenant among 10,000 by id, through the list filters.
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=tenants]").click()
        wait.until(EC.visibility_of_element_located((By.ID, "tenant-table")))
        wait.until(lambda _: "10002 matches" in d.find_element(By.ID, "tenant-count").text)
        # Paging walks the cursor: the second page starts after the first.
        ids = lambda: attr_of_rows(d, "#tenant-table tbody tr", "data-tenant")
        first = ids()
        assert len(first) == 50, first
        d.find_element(By.ID, "tenant-next").click()
        wait.until(lambda _: ids() and ids()[0] > first[-1])
        d.find_element(By.ID, "tenant-prev").click()
        wait.until(lambda _: ids() == first)
        Select(d.find_element(By.ID, "tenant-field")).select_by_value("id_prefix")
        q = d.find_element(By.ID, "tenant-query")
        q.send_keys(args.find)
        d.find_element(By.ID, "tenant-search").click()
        wait.until(lambda _: d.find_element(By.ID, "tenant-count").text.startswith("1 match"))
        assert ids() == [args.find], ids()
        # A label search too: half the tenants are gold.
        Select(d.find_element(By.ID, "tenant-field")).select_by_value("label")
        q.clear()
        q.send_keys("tier=gold")
        d.find_element(By.ID, "tenant-search").click()
        wait.until(lambda _: d.find_element(By.ID, "tenant-count").text.startswith("5000 matches"))
        shot("tenants")
        Select(d.find_element(By.ID, "tenant-field")).select_by_value("id_prefix")
        q.clear()
        q.send_keys(args.find)
        d.find_element(By.ID, "tenant-search").click()
        wait.until(lambda _: d.find_element(By.ID, "tenant-count").text.startswith("1 match"))
        step("found", args.find)

        # Open it.
        d.find_element(By.CSS_SELECTOR, f"#tenant-table tr[data-tenant='{args.find}'] a").click()
        wait.until(lambda _: d.find_element(By.ID, "tenant-title").text == "Tenant " + args.find)
        wait.until(EC.visibility_of_element_located((By.ID, "tenant-facts")))
        assert "p" in d.find_element(By.ID, "tenant-facts").text
        wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#tenant-audit table, #tenant-audit p"))
        # A label holding markup is shown as text and never runs.
        profile = d.find_element(By.ID, "tenant-profile").text
        assert args.markup.replace('"', '\\"') in profile or args.markup in profile, profile
        assert d.execute_script("return window.__xss === undefined && document.querySelectorAll('#main img, #main script').length === 0")
        shot("tenant")
        step("opened")

        # A limited tenant: a burst past its rate is refused (429), and its
        # page shows its quota use and those refusals.
        statuses = burst(args.proxy, args.limited + ".saas.example", 8)
        assert 429 in statuses and 200 in statuses, statuses
        d.get(args.admin + "/console/#/tenant/" + args.limited)
        wait.until(EC.visibility_of_element_located((By.ID, "usage-table")))
        wait.until(lambda _: d.find_elements(By.ID, "refusal-table"))
        refusals = d.find_element(By.ID, "refusal-table").text
        assert "429" in refusals and "limit (burst)" in refusals and "GET /burst/" in refusals, refusals
        assert "secret" not in refusals, refusals
        n429 = statuses.count(429)
        assert len(d.find_elements(By.CSS_SELECTOR, "#refusal-table tbody tr")) == n429, (refusals, statuses)
        day = d.find_element(By.CSS_SELECTOR, "#usage-table tr[data-limit='day quota']").text
        assert f"{statuses.count(200)} of 100000" in day, day
        assert d.find_elements(By.CSS_SELECTOR, "#usage-table tr[data-limit='rate']")
        shot("tenant-usage")
        step("usage", f"{n429} refusals shown")

        # Top tenants, live: one tenant's load, then a heavier one's.
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=top]").click()
        wait.until(lambda _: d.find_elements(By.ID, "top-table") or d.find_elements(By.ID, "top-empty"))
        loads.append(Load(args.proxy, args.hot + ".saas.example"))
        top_ids = lambda: attr_of_rows(d, "#top-table tbody tr", "data-tenant")
        wait.until(lambda _: top_ids()[:1] == [args.hot])
        step("top-first", args.hot)
        loads[0].end()
        for _ in range(3):
            loads.append(Load(args.proxy, args.hotter + ".saas.example"))
        WebDriverWait(d, 60).until(lambda _: top_ids()[:1] == [args.hotter])
        rows = top_ids()
        assert args.hot in rows, rows
        shot("top")
        # The 5xx ranking is a choice away and holds nobody (every answer was 200).
        Select(d.find_element(By.ID, "top-by")).select_by_value("5xx")
        wait.until(lambda _: d.find_elements(By.ID, "top-empty"))
        for l in loads:
            l.end()
        step("top-changed", f"{args.hot} -> {args.hotter} ({sum(l.sent for l in loads)} requests)")

        # Changes: preview the rollback (its diff shown), then roll back.
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=changes]").click()
        row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#versions tr[data-version='{args.rollback}']")))
        row.find_element(By.CSS_SELECTOR, "button.preview").click()
        wait.until(EC.visibility_of_element_located((By.ID, "rollback-confirm")))
        diff = d.find_element(By.ID, "rollback-diff").text
        assert "zz-rollback-me" in diff and "delete" in diff, diff
        shot("changes")
        d.find_element(By.ID, "rollback-confirm").click()
        wait.until(lambda _: "Rolled back to version " + args.rollback in d.find_element(By.ID, "rollback-result").text)
        wait.until(lambda _: "rollback" in d.find_element(By.ID, "audit").text)
        step("rolled-back", args.rollback)

        # Domains: the stuck name with its diagnosis, then the re-check.
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=domains]").click()
        row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#stuck-claims tr[data-name='{args.domain}']")))
        assert "pending" in row.text, row.text
        row.find_element(By.XPATH, ".//button[text()='Diagnose']").click()
        wait.until(EC.visibility_of_element_located((By.ID, "check-table")))
        # The diagnosis names the missing record and how to fix it.
        check = d.find_element(By.ID, "check-table").text
        assert "ownership_txt" in check and "failed" in check, check
        shot("domains")
        set_txt(args.dns_admin, args.txt_name, args.txt_value)
        row = d.find_element(By.CSS_SELECTOR, f"#stuck-claims tr[data-name='{args.domain}']")
        row.find_element(By.CSS_SELECTOR, "button.recheck").click()
        wait.until(lambda _: "active" in d.find_element(By.ID, "verify-result").text)
        step("rechecked", d.find_element(By.ID, "verify-result").text)

        # Pools render; sign out; a tenant token sees only its tenant.
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=pools]").click()
        wait.until(EC.visibility_of_element_located((By.ID, "pools")))
        shot("pools")
        # Rollouts: the configured one, nobody moved yet.
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=rollouts]").click()
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#rollouts tr[data-name='v2']")))
        row = d.find_element(By.CSS_SELECTOR, "#rollouts tr[data-name='v2']").text
        assert "p → dead" in row and "active" in row and "0 of 10001" in row, row
        step("rollouts", row)
        # Promote after its preview: the first step moves some of them to
        # the other pool; then roll back after its preview: nobody moved.
        def row_text():
            return d.find_element(By.CSS_SELECTOR, "#rollouts tr[data-name='v2']").text
        d.find_element(By.CSS_SELECTOR, "#rollouts tr[data-name='v2'] button.promote").click()
        wait.until(EC.visibility_of_element_located((By.ID, "rollout-moves")))
        moves = d.find_element(By.ID, "rollout-moves").text
        assert "dead" in moves, moves
        assert row_text().count("0 of 10001") == 1, row_text()
        shot("rollout-preview")
        d.find_element(By.ID, "rollout-confirm").click()
        wait.until(lambda _: "active, 5 %" in d.find_element(By.ID, "rollout-result").text)
        wait.until(lambda _: "5 % (5 % of candidates)" in row_text())
        moved = int(row_text().split(" of 10001")[0].split()[-1])
        assert 300 < moved < 700, row_text()
        step("promoted", row_text())
        d.find_element(By.CSS_SELECTOR, "#rollouts tr[data-name='v2'] button.rollback").click()
        wait.until(lambda _: "p" in d.find_element(By.ID, "rollout-moves").text
                   and str(moved) in d.find_element(By.ID, "rollout-moves").text)
        d.find_element(By.ID, "rollout-confirm").click()
        wait.until(lambda _: "rolled_back" in d.find_element(By.ID, "rollout-result").text)
        # A rolled-back rollout takes nobody: no candidates, none moved.
        wait.until(lambda _: "rolled_back" in row_text() and "0 of 0" in row_text())
        step("rolled back", row_text())
        shot("rollouts")
        d.find_element(By.CSS_SELECTOR, "#nav a[data-page=overview]").click()
        wait.until(EC.visibility_of_element_located((By.ID, "overview-charts")))
        time.sleep(1)
        shot("overview-after")
        d.find_element(By.ID, "signout").click()
        wait.until(EC.visibility_of_element_located((By.ID, "token")))
        assert d.execute_script("return sessionStorage.getItem('tenantgate.token')") is None
        d.find_element(By.ID, "token").send_keys(args.tenant_token)
        d.find_element(By.ID, "signin-button").click()
        wait.until(lambda _: d.find_elements(By.ID, "tenant-title") and d.find_element(By.ID, "tenant-title").text == "Tenant acme")
        # The tenant's own token reads its own use and refusals.
        wait.until(lambda _: d.find_elements(By.ID, "refusal-table"))
        visible = [a.get_attribute("data-page") for a in d.find_elements(By.CSS_SELECTOR, "#nav a") if a.is_displayed()]
        assert visible == ["tenants", "domains"], visible
        d.get(args.admin + "/console/#/tenant/" + args.find)
        wait.until(lambda _: "403" in d.find_element(By.ID, "main").text)
        d.get(args.admin + "/console/#/overview")
        wait.until(lambda _: "403" in d.find_element(By.ID, "main").text)
        shot("tenant-token")
        step("tenant-token")

        # No CSP violation or script error was logged along the way.
        errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                  and "Content Security Policy" in e.get("message", "")]
        assert not errors, errors
    except Exception as e:
        shot("failure")
        print("FAILED:", repr(e), file=sys.stderr)
        try:
            print(d.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
            for entry in d.get_log("browser"):
                print("console:", entry, file=sys.stderr)
        except Exception:
            pass
        raise
    finally:
        for l in loads:
            l.end()
        d.quit()


if __name__ == "__main__":
    if parse().flow == "retry":
        retry_flow(parse())
    else:
        main()
