// tenantgate console. Talks only to the admin API of this origin, with the
// token kept in sessionStorage and sent as Authorization: Bearer. Every
// piece of data reaches the page through textContent or setAttribute with
// values built here, never parsed as markup.
'use strict';
(function () {
  const TOKEN_KEY = 'tenantgate.token';
  const PAGE = 50;
  let session = null;
  let timers = [];
  let renderSeq = 0;

  // ---- DOM helpers --------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const k of Object.keys(attrs || {})) {
      const v = attrs[k];
      if (v === null || v === undefined || v === false) continue;
      if (k === 'onclick') n.addEventListener('click', v);
      else if (k === 'onchange') n.addEventListener('change', v);
      else if (k === 'onsubmit') n.addEventListener('submit', v);
      else n.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of kids.flat()) {
      if (c === null || c === undefined || c === false) continue;
      n.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return n;
  }
  const $ = id => document.getElementById(id);
  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); }
  function link(page, arg, text) {
    return h('a', { href: '#/' + page + (arg === undefined ? '' : '/' + encodeURIComponent(arg)) }, text);
  }
  function num(v, digits) {
    if (v === null || v === undefined) return '–';
    if (typeof v !== 'number') return String(v);
    return v.toFixed(digits === undefined ? (Number.isInteger(v) ? 0 : 2) : digits);
  }
  function ms(seconds) { return seconds ? TgChart.fmt(seconds, 's') : '–'; }
  function table(id, heads, rows) {
    return h('table', { id: id },
      h('thead', {}, h('tr', {}, heads.map(x => h('th', { class: x.endsWith('#') ? 'num' : null }, x.replace(/#$/, ''))))),
      h('tbody', {}, rows));
  }
  // The first few items of a long list, and how many more.
  function summary(items, max) {
    const n = max || 8;
    return items.slice(0, n).join(', ') + (items.length > n ? ' and ' + (items.length - n) + ' more' : '');
  }
  // An RFC 3339 time without its fraction of a second.
  function when(t) { return typeof t === 'string' ? t.replace(/\.\d+(Z|[+-])/, '$1').replace('T', ' ') : ''; }
  function td(v, cls) { return h('td', { class: cls || null }, v); }
  function status(text, bad) {
    const s = $('status');
    s.textContent = text;
    s.className = bad ? 'error' : '';
  }
  function every(ms, fn) { timers.push(setInterval(fn, ms)); }

  // ---- API ----------------------------------------------------------------
  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { 'Authorization': 'Bearer ' + token, 'Accept': 'application/json' };
    const init = { method: method, headers: headers, credentials: 'omit', cache: 'no-store', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      status('the gateway did not answer: ' + e.message, true);
      return { status: 0, ok: false, data: null };
    }
    let data = null;
    const type = resp.headers.get('content-type') || '';
    if (type.includes('json')) {
      try { data = await resp.json(); } catch (e) { data = null; }
    }
    if (resp.status === 401) {
      signOut('The token was refused (401): sign in again.');
    } else if (!resp.ok && resp.status !== 403 && resp.status !== 404) {
      status(method + ' ' + path + ': ' + resp.status + ' ' + ((data && (data.detail || data.title)) || ''), true);
    } else {
      status('updated ' + new Date().toLocaleTimeString());
    }
    return { status: resp.status, ok: resp.ok, data: data };
  }
  // A panel's text when the token may not see it.
  function refused(r) {
    if (r.status === 403) return h('p', { class: 'muted' }, 'This token may not see this (403): ' + ((r.data && r.data.detail) || 'operator only') + '.');
    if (r.status === 404) return h('p', { class: 'muted' }, 'Not found: ' + ((r.data && r.data.detail) || ''));
    return h('p', { class: 'error' }, 'Failed: ' + r.status + ' ' + ((r.data && r.data.detail) || ''));
  }

  // ---- sign in ------------------------------------------------------------
  async function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    const r = await api('GET', '/v1/session');
    if (!r.ok || !r.data) {
      sessionStorage.removeItem(TOKEN_KEY);
      $('signin-error').textContent = r.status === 401 ? 'That token is not valid.' : 'Sign-in failed (' + r.status + ').';
      return false;
    }
    session = r.data;
    $('signin-panel').hidden = true;
    $('main').hidden = false;
    $('nav').hidden = false;
    $('signout').hidden = false;
    $('whoami').textContent = session.name + ' (' + (session.scope === 'tenant' ? 'tenant ' + session.tenant : 'operator') + ')';
    for (const a of document.querySelectorAll('#nav a')) {
      const page = a.getAttribute('data-page');
      a.hidden = session.scope === 'tenant' && !['tenants', 'domains'].includes(page);
      if (page === 'tenants' && session.scope === 'tenant') {
        a.textContent = 'My tenant';
        a.setAttribute('href', '#/tenant/' + encodeURIComponent(session.tenant));
      }
    }
    return true;
  }
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    session = null;
    stopTimers();
    $('main').hidden = true;
    clear($('main'));
    $('nav').hidden = true;
    $('signout').hidden = true;
    $('whoami').textContent = '';
    $('signin-panel').hidden = false;
    $('signin-error').textContent = message || '';
    $('token').value = '';
  }
  function stopTimers() { for (const t of timers) clearInterval(t); timers = []; }

  // ---- router -------------------------------------------------------------
  const pages = { overview: overview, top: top, tenants: tenants, tenant: tenant, domains: domains, changes: changes, pools: pools, rollouts: rollouts };
  async function route() {
    if (!session) return;
    stopTimers();
    const seq = ++renderSeq;
    const parts = location.hash.replace(/^#\/?/, '').split('/');
    let name = parts[0] || (session.scope === 'tenant' ? 'tenant' : 'overview');
    let arg = parts.length > 1 ? decodeURIComponent(parts.slice(1).join('/')) : undefined;
    if (session.scope === 'tenant' && name === 'tenant') arg = arg || session.tenant;
    const page = pages[name] || overview;
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.getAttribute('data-page') === name || (name === 'tenant' && a.getAttribute('data-page') === 'tenants'));
    }
    const main = $('main');
    clear(main);
    const root = h('div', { id: 'page-' + name });
    main.appendChild(root);
    await page(root, arg, () => seq === renderSeq);
  }

  // ---- Overview -----------------------------------------------------------
  async function overview(root, _arg, live) {
    root.appendChild(h('h1', {}, 'Overview'));
    const cards = h('div', { class: 'cards', id: 'overview-cards' });
    const charts = h('div', { class: 'grid2', id: 'overview-charts' });
    const detail = h('div', { class: 'grid2' });
    const replicas = h('div', { class: 'panel', id: 'replicas' });
    root.append(cards, charts, replicas, detail);
    async function load() {
      const [o, s, rp] = await Promise.all([api('GET', '/v1/stats/overview'), api('GET', '/v1/stats/series'), api('GET', '/v1/stats/replicas')]);
      if (!live()) return;
      clear(cards); clear(charts); clear(detail); clear(replicas);
      replicas.appendChild(h('h2', {}, 'Replicas'));
      if (!rp.ok) replicas.appendChild(refused(rp));
      else {
        const rd = rp.data;
        replicas.appendChild(h('p', { class: 'muted', id: 'replicas-info' }, rd.fleet
          ? 'Fleet mode: ' + rd.replicas.length + ' live replica' + (rd.replicas.length === 1 ? '' : 's') + (rd.store === 'down' ? ' (the store is down: this node only)' : '') + '; each publishes every 2 s; rates over its last 10 s window.'
          : 'Single node (no [store]); rates over the last 10 s window.'));
        replicas.appendChild(table('replica-table', ['replica', 'registry version#', 'generation#', 'req/s#', '5xx/s#', 'p99#', 'requests#', 'last seen'],
          rd.replicas.map(x => h('tr', { 'data-replica': x.id, class: x.id === rd.self ? 'self' : null },
            td(x.id + (x.id === rd.self ? ' (this node)' : '')), td(num(x.version), 'num'), td(num(x.generation), 'num'),
            td(x.rps === undefined ? '–' : num(x.rps, 1), 'num'), td(x.errors_per_sec === undefined ? '–' : num(x.errors_per_sec, 2), 'num'),
            td(ms(x.p99), 'num'), td(num(x.requests), 'num'), td(x.last_seen_ms === 0 ? 'now' : (x.last_seen_ms / 1000).toFixed(1) + ' s ago')))));
      }
      if (!o.ok) { cards.appendChild(refused(o)); return; }
      const d = o.data, now = d.now || {};
      const card = (label, value, sub, id) => h('div', { class: 'card', id: id || null }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), h('div', { class: 'sub' }, sub || ''));
      const refusalsNow = Object.values(now.refusals_per_sec || {}).reduce((a, b) => a + b, 0);
      cards.append(
        card('Requests / s', num(now.rps || 0, 1), d.since_start.requests + ' since start', 'card-rps'),
        card('5xx / s', num(now.errors_per_sec || 0, 2), d.since_start.errors_5xx + ' since start'),
        card('Refused / s', num(refusalsNow, 2), 'by the gateway itself'),
        card('Latency p50 / p99', ms(now.p50) + ' / ' + ms(now.p99), 'last 10 s; since start ' + ms(d.since_start.p50) + ' / ' + ms(d.since_start.p99)),
        card('Tenants', String(d.tenants.total), d.tenants.maintenance + ' in maintenance', 'card-tenants'),
        card('Domains', String(d.domains.active), d.domains.pending + ' pending, ' + d.domains.failed + ' failed'),
        card('Config generation', String(d.generation), 'up ' + Math.round(d.uptime_secs / 60) + ' min' + (d.fleet ? ', fleet mode' : ''), 'card-generation'));
      const pts = (s.ok && s.data.points) || [];
      const reasons = new Set();
      for (const p of pts) for (const r of Object.keys(p.refusals_per_sec)) reasons.add(r);
      charts.append(
        h('div', { class: 'panel' }, h('h2', {}, 'Requests per second, last hour'),
          TgChart.line([{ name: 'req/s', points: pts.map(p => [p.t, p.rps]) }, { name: '5xx/s', points: pts.map(p => [p.t, p.errors_per_sec]) }], {})),
        h('div', { class: 'panel' }, h('h2', {}, 'Refusals per second by reason'),
          TgChart.line([...reasons].slice(0, 4).map(r => ({ name: r, points: pts.map(p => [p.t, p.refusals_per_sec[r] || 0]) })), { empty: pts.length ? 'no refusals in the last hour' : '' })),
        h('div', { class: 'panel' }, h('h2', {}, 'Latency'),
          TgChart.line([{ name: 'p50', points: pts.map(p => [p.t, p.p50]) }, { name: 'p99', points: pts.map(p => [p.t, p.p99]) }], { unit: 's' })));
      const refusalRows = Object.entries(d.since_start.refusals).sort((a, b) => b[1] - a[1])
        .map(([r, c]) => h('tr', {}, td(r), td(String(c), 'num'), td(num((now.refusals_per_sec || {})[r] || 0, 2), 'num')));
      detail.append(h('div', { class: 'panel' }, h('h2', {}, 'Refusals by reason'),
        refusalRows.length ? table('refusals', ['reason', 'since start#', 'per s now#'], refusalRows) : h('p', { class: 'muted' }, 'None.')));
      const certs = d.certificates;
      detail.append(h('div', { class: 'panel', id: 'certificates' }, h('h2', {}, 'Certificates'),
        certs ? h('div', {},
          table('cert-states', ['state', 'names#'], Object.entries(certs.states).map(([k, v]) => h('tr', {}, td(k), td(String(v), 'num')))),
          h('h3', {}, 'By time left'),
          table('cert-expiry', ['band', 'names#'], Object.entries(certs.expiry).map(([k, v]) => h('tr', {}, td(({ expired: 'expired', lt7d: 'under 7 days', lt14d: '7 to 14 days', lt30d: '14 to 30 days', ge30d: '30 days or more' })[k] || k), td(String(v), 'num')))))
          : h('p', { class: 'muted' }, 'TLS is off on this gateway.')));
    }
    await load();
    every(5000, load);
  }

  // ---- Top tenants --------------------------------------------------------
  async function top(root, _arg, live) {
    const by = h('select', { id: 'top-by' },
      h('option', { value: 'rps' }, 'requests / s'), h('option', { value: '5xx' }, '5xx / s'),
      h('option', { value: '429' }, '429 / s'), h('option', { value: 'p99' }, 'p99 latency'));
    const info = h('span', { class: 'muted', id: 'top-info' });
    const box = h('div', { class: 'panel' });
    root.append(h('h1', {}, 'Top tenants, live'), h('div', { class: 'row' }, h('label', { for: 'top-by' }, 'Ranked by'), by, info), box);
    async function load() {
      const r = await api('GET', '/v1/stats/top?limit=50&by=' + encodeURIComponent(by.value));
      if (!live()) return;
      clear(box);
      if (!r.ok) { box.appendChild(refused(r)); return; }
      info.textContent = 'K = ' + r.data.k + ' tracked tenants; rates over the last ' + r.data.window_secs + ' to ' + 2 * r.data.window_secs + ' s; refreshed every 2 s';
      const rows = r.data.tenants.map((t, i) => h('tr', { 'data-tenant': t.tenant },
        td(String(i + 1), 'num'), h('td', { class: 'tenant' }, link('tenant', t.tenant, t.tenant)),
        td(num(t.rps, 1), 'num'), td(num(t.errors_per_sec, 2), 'num'), td(num(t.limited_per_sec, 2), 'num'), td(ms(t.p99), 'num')));
      box.appendChild(rows.length ? table('top-table', ['#', 'tenant', 'req/s#', '5xx/s#', '429/s#', 'p99#'], rows)
        : h('p', { class: 'muted', id: 'top-empty' }, 'No traffic in the last 20 s.'));
    }
    by.addEventListener('change', load);
    await load();
    every(2000, load);
  }

  // ---- Tenants ------------------------------------------------------------
  async function tenants(root, _arg, live) {
    const field = h('select', { id: 'tenant-field' },
      h('option', { value: 'id_prefix' }, 'id starts with'), h('option', { value: 'domain' }, 'domain'),
      h('option', { value: 'label' }, 'label key=value'), h('option', { value: 'plan' }, 'plan'),
      h('option', { value: 'pool' }, 'pool'), h('option', { value: 'template' }, 'template'));
    const q = h('input', { id: 'tenant-query', type: 'search', placeholder: 'search', spellcheck: 'false' });
    const count = h('span', { class: 'muted', id: 'tenant-count' });
    const box = h('div', { class: 'panel' });
    const prev = h('button', { id: 'tenant-prev', type: 'button', class: 'secondary', disabled: true }, '← Previous');
    const next = h('button', { id: 'tenant-next', type: 'button', class: 'secondary', disabled: true }, 'Next →');
    const form = h('form', { class: 'row', id: 'tenant-form' }, field, q, h('button', { id: 'tenant-search', type: 'submit' }, 'Search'), count);
    root.append(h('h1', {}, 'Tenants'), form, h('div', { class: 'row' }, prev, next), box);
    let cursors = [];   // cursor of each page shown so far ('' = first)
    async function load(cursor) {
      const params = new URLSearchParams({ limit: String(PAGE) });
      if (q.value.trim()) params.set(field.value, q.value.trim());
      if (cursor) params.set('cursor', cursor);
      const r = await api('GET', '/v1/tenants?' + params.toString());
      if (!live()) return;
      clear(box);
      if (!r.ok) { box.appendChild(refused(r)); next.disabled = prev.disabled = true; return; }
      count.textContent = r.data.total + ' match' + (r.data.total === 1 ? '' : 'es') + ' (generation ' + r.data.generation + ')';
      const rows = r.data.tenants.map(t => h('tr', { 'data-tenant': t.id }, h('td', { class: 'tenant' }, link('tenant', t.id, t.id)), td(t.pool || '')));
      box.appendChild(rows.length ? table('tenant-table', ['tenant', 'pool'], rows) : h('p', { class: 'muted' }, 'No tenant matches.'));
      next.disabled = !r.data.next_cursor;
      next.dataset.cursor = r.data.next_cursor || '';
      prev.disabled = cursors.length <= 1;
    }
    form.addEventListener('submit', e => { e.preventDefault(); cursors = ['']; load(''); });
    next.addEventListener('click', () => { const c = next.dataset.cursor; cursors.push(c); load(c); });
    prev.addEventListener('click', () => { cursors.pop(); load(cursors[cursors.length - 1]); });
    cursors = [''];
    await load('');
  }

  // ---- One tenant ---------------------------------------------------------
  async function tenant(root, id, live) {
    root.appendChild(h('h1', { id: 'tenant-title' }, 'Tenant ' + id));
    const r = await api('GET', '/v1/tenants/' + encodeURIComponent(id));
    if (!live()) return;
    if (!r.ok) { root.appendChild(refused(r)); return; }
    const t = r.data;
    const facts = [['pool', t.pool], ['plan', t.plan], ['template', t.template], ['subdomain', t.subdomain], ['region', t.region], ['timezone', t.timezone], ['source', t.source]]
      .filter(x => x[1] !== undefined && x[1] !== null)
      .map(([k, v]) => h('tr', {}, td(k), td(typeof v === 'string' ? v : JSON.stringify(v))));
    const domainBox = h('div', { id: 'tenant-domains' }, h('p', { class: 'muted' }, 'Loading domains…'));
    const loadBox = h('div', { id: 'tenant-load-box' });
    const usageBox = h('div', { id: 'tenant-usage' }, h('p', { class: 'muted' }, 'Loading…'));
    const refusalBox = h('div', { id: 'tenant-refusals' });
    const auditBox = h('div', { id: 'tenant-audit' });
    root.append(
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, h('h2', {}, 'Settings'), table('tenant-facts', ['field', 'value'], facts)),
        h('div', { class: 'panel' }, h('h2', {}, 'Load and refusals now'), loadBox)),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, h('h2', {}, 'Quota and limit use'), usageBox),
        h('div', { class: 'panel' }, h('h2', {}, 'Recent refusals'), refusalBox)),
      h('div', { class: 'panel' }, h('h2', {}, 'Domains'), domainBox),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel', id: 'tenant-limits' }, h('h2', {}, 'Limits'), h('pre', {}, t.limits ? JSON.stringify(t.limits, null, 2) : 'From the plan' + (t.plan ? ' ' + t.plan : '') + ' (no own limits).')),
        h('div', { class: 'panel', id: 'tenant-profile' }, h('h2', {}, 'Profile'), h('pre', {}, JSON.stringify({ labels: t.labels, features: t.features, locale: t.locale, branding: t.branding, maintenance: t.maintenance }, null, 2)))),
      h('div', { class: 'panel' }, h('h2', {}, 'Audit entries'), auditBox));
    await usage(id, usageBox, refusalBox, live);
    every(5000, () => usage(id, usageBox, refusalBox, live));
    // Domains with their lifecycle and certificate state (first 25 names).
    const names = (t.domains || []).slice(0, 25);
    const claims = t.domain_claims || [];
    const rows = [];
    for (const name of names) {
      const d = await api('GET', '/v1/domains/' + encodeURIComponent(name.replace(/^\*\./, 'x.')));
      if (!live()) return;
      const cert = d.ok && d.data.certificate ? d.data.certificate : null;
      rows.push(h('tr', {}, td(name), td(d.ok ? d.data.state : '–'),
        td(cert ? cert.source + (cert.acme ? ' (' + cert.acme.state + ')' : '') + (cert.detail ? ': ' + cert.detail : '') : (d.ok ? 'none' : '–')),
        td(cert && cert.not_after ? cert.not_after : ''),
        h('td', {}, h('button', { type: 'button', class: 'secondary', onclick: () => diagnose(name, rowOut) }, 'Check'))));
    }
    const rowOut = h('div', { id: 'tenant-check' });
    for (const c of claims) {
      rows.push(h('tr', {}, td(c.name), td(c.state), td('not yet: the name must be proven first'), td(c.next_check || ''),
        h('td', {}, h('button', { type: 'button', class: 'secondary', onclick: () => recheck(c.name, rowOut) }, 'Re-check'))));
    }
    clear(domainBox);
    domainBox.append(rows.length ? table('tenant-domain-table', ['name', 'state', 'certificate', 'not after / next check', ''], rows) : h('p', { class: 'muted' }, 'No custom domains.'), rowOut);
    if ((t.domains || []).length > names.length) domainBox.appendChild(h('p', { class: 'muted' }, (t.domains.length - names.length) + ' more names not shown.'));
    // Its rows in the live rankings, when the sketch tracks it.
    if (session.scope === 'operator') {
      const ranks = await Promise.all(['rps', '5xx', '429'].map(by => api('GET', '/v1/stats/top?limit=1000&by=' + by)));
      if (!live()) return;
      const mine = ranks.map(x => x.ok ? x.data.tenants.find(row => row.tenant === id) : null);
      const seen = mine.find(x => x);
      loadBox.appendChild(seen ? table('tenant-load', ['req/s#', '5xx/s#', '429/s#', 'p99#'], [h('tr', {},
        td(num((mine[0] || seen).rps, 1), 'num'), td(num((mine[1] || seen).errors_per_sec, 2), 'num'),
        td(num((mine[2] || seen).limited_per_sec, 2), 'num'), td(ms((mine[0] || seen).p99), 'num'))])
        : h('p', { class: 'muted' }, 'Not among the busiest, most failing or most refused tenants in the last 20 s.'));
    } else {
      loadBox.appendChild(h('p', { class: 'muted' }, 'Platform rankings need an operator token.'));
    }
    const a = await api('GET', '/v1/audit?limit=20&tenant=' + encodeURIComponent(id));
    if (!live()) return;
    auditBox.appendChild(auditTable(a, 'tenant-audit-table'));
  }

  // A tenant's limits, their use now and its recent refusals.
  async function usage(id, usageBox, refusalBox, live) {
    const u = await api('GET', '/v1/tenants/' + encodeURIComponent(id) + '/usage');
    if (!live()) return;
    clear(usageBox); clear(refusalBox);
    if (!u.ok) { usageBox.appendChild(refused(u)); return; }
    const d = u.data, l = d.limits, now = d.use;
    if (!l) usageBox.appendChild(h('p', { class: 'muted', id: 'usage-none' }, 'No limits: every request is admitted.'));
    else {
      const pct = (used, limit) => limit ? ' (' + Math.min(100, Math.round(100 * used / limit)) + ' %)' : '';
      const rows = [];
      if (l.max_concurrent !== null) rows.push(['in flight', now.in_flight + ' of ' + l.max_concurrent + pct(now.in_flight, l.max_concurrent), 'this replica']);
      if (l.rate_per_second !== null) rows.push(['rate', l.rate_per_second + '/s, burst ' + l.burst, now.burst_left === null ? 'shared in the fleet' : now.burst_left + ' left now']);
      for (const [k, name] of [['day', 'day quota'], ['month', 'month quota']]) {
        const q = now[k];
        if (q) rows.push([name, q.used + ' of ' + q.limit + pct(q.used, q.limit), 'resets in ' + TgChart.fmt(q.resets_in_secs, 's')]);
      }
      if (l.client_rate_per_second !== null) rows.push(['per client', l.client_rate_per_second + '/s', '']);
      usageBox.appendChild(table('usage-table', ['limit', 'use', ''], rows.map(([a, b, c]) => h('tr', { 'data-limit': a }, td(a), td(b), td(c)))));
      usageBox.appendChild(h('p', { class: 'muted' }, 'Time zone ' + l.timezone + (d.fleet ? '; quota counts are the fleet\'s, leased budget included' : '')));
    }
    refusalBox.appendChild(d.refusals.length
      ? table('refusal-table', ['at', 'status#', 'reason', 'request'], d.refusals.map(r => h('tr', {},
        td(new Date(r.at_ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z')), td(String(r.status), 'num'),
        td(r.reason + (r.detail ? ' (' + r.detail + ')' : '')), td(r.method + ' ' + r.path))))
      : h('p', { class: 'muted', id: 'refusals-none' }, 'No refusals kept for this tenant.'));
    if (d.refusals.length) refusalBox.appendChild(h('p', { class: 'muted' }, 'Newest first; the gateway keeps the last ' + d.refusals_kept + ' per tenant (on this node).'));
  }

  function auditTable(a, id) {
    if (!a.ok) return refused(a);
    const rows = a.data.entries.slice().reverse().map(e => h('tr', {}, td(when(e.at)), td(e.who === null ? '(another token)' : e.who), td(e.request),
      td(e.result === 'applied' ? h('span', { class: 'badge good' }, 'applied') : h('span', { class: 'badge bad' }, 'rejected ' + (e.status || ''))),
      td(summary((e.diff || []).map(d => (d.tenant || d.template || '') + ' ' + d.action)) || (e.problem || ''))));
    return rows.length ? table(id, ['at', 'who', 'request', 'result', 'changes'], rows) : h('p', { class: 'muted' }, 'No entries.');
  }

  // ---- Domains ------------------------------------------------------------
  async function diagnose(name, out) {
    clear(out);
    out.appendChild(h('p', { class: 'muted' }, 'Checking ' + name + '…'));
    const r = await api('GET', '/v1/domains/' + encodeURIComponent(name) + '/check');
    clear(out);
    if (!r.ok) { out.appendChild(refused(r)); return; }
    out.append(h('h3', {}, name + ': ' + (r.data.ready ? 'ready' : 'not ready')),
      table('check-table', ['check', 'result', 'found', 'fix'], r.data.checks.map(c => h('tr', {},
        td(c.check), td(c.ok ? h('span', { class: 'badge good' }, 'ok') : h('span', { class: 'badge bad' }, 'failed')), td(c.found), td(c.fix || '')))));
  }
  async function recheck(name, out) {
    clear(out);
    const r = await api('POST', '/v1/domains/' + encodeURIComponent(name) + '/verify');
    if (!r.ok) { out.appendChild(refused(r)); return; }
    const results = (r.data && r.data.results) || [];
    out.append(h('p', { id: 'verify-result' }, 'Re-checked ' + name + ': ' +
      (results.length ? results.map(x => x.tenant + ' ' + x.state + (x.detail ? ' (' + x.detail + ')' : '')).join('; ') : 'no claim of this token on the name')));
  }
  async function retryOrder(name, out) {
    clear(out);
    const r = await api('POST', '/v1/domains/' + encodeURIComponent(name) + '/retry');
    if (!r.ok) { out.appendChild(refused(r)); return; }
    const a = (r.data && r.data.acme) || {};
    out.append(h('p', { id: 'retry-result' }, 'Order of ' + name + ' retried: ' + (a.state || 'scheduled') +
      (a.next_attempt ? ', next attempt ' + a.next_attempt : '')));
  }
  async function domains(root, _arg, live) {
    root.appendChild(h('h1', {}, 'Domains'));
    const out = h('div', { id: 'check-result' });
    const name = h('input', { id: 'check-name', type: 'text', placeholder: 'shop.example.com', spellcheck: 'false' });
    const form = h('form', { class: 'row' }, h('label', { for: 'check-name' }, 'Any name'), name,
      h('button', { type: 'submit', id: 'check-button' }, 'Diagnose'),
      h('button', { type: 'button', id: 'verify-button', class: 'secondary', onclick: () => name.value.trim() && recheck(name.value.trim(), out) }, 'Re-check claim'));
    form.addEventListener('submit', e => { e.preventDefault(); if (name.value.trim()) diagnose(name.value.trim(), out); });
    const stuck = h('div', { class: 'panel' }, h('h2', {}, 'Names waiting for their ownership proof, or refused'));
    const failing = h('div', { class: 'panel' }, h('h2', {}, 'Certificate orders failing'));
    root.append(h('div', { class: 'panel' }, form, out), stuck, failing);
    const r = await api('GET', '/v1/stats/domains?limit=200');
    if (!live()) return;
    if (!r.ok) {
      stuck.appendChild(session.scope === 'tenant' ? h('p', { class: 'muted' }, 'A tenant token sees its own names on its tenant page; diagnose one here by name.') : refused(r));
      return;
    }
    stuck.appendChild(r.data.claims.length ? table('stuck-claims', ['name', 'tenant', 'state', 'attempts#', 'detail', ''],
      r.data.claims.map(c => h('tr', { 'data-name': c.name }, td(c.name), h('td', {}, link('tenant', c.tenant, c.tenant)),
        td(h('span', { class: 'badge ' + (c.state === 'failed' ? 'bad' : 'warn') }, c.state)), td(String(c.attempts), 'num'), td(c.detail || ''),
        h('td', {}, h('button', { type: 'button', class: 'secondary', onclick: () => diagnose(c.name, out) }, 'Diagnose'), ' ',
          h('button', { type: 'button', class: 'recheck', onclick: () => recheck(c.name, out) }, 'Re-check')))))
      : h('p', { class: 'muted' }, 'No pending or failed claims.'));
    // Retry clears the name's backoff (POST /v1/domains/{name}/retry).
    failing.appendChild(r.data.certificates.length ? table('failing-certs', ['name', 'failures#', 'last error', ''],
      r.data.certificates.map(c => h('tr', {}, td(c.name), td(String(c.failures), 'num'), td(c.last_error),
        h('td', {}, h('button', { type: 'button', class: 'secondary', onclick: () => diagnose(c.name, out) }, 'Diagnose'), ' ',
          h('button', { type: 'button', class: 'retry', onclick: () => retryOrder(c.name, out) }, 'Retry order')))))
      : h('p', { class: 'muted' }, 'No failing orders.'));
  }

  // ---- Changes ------------------------------------------------------------
  function diffTable(diff) {
    const rows = [];
    for (const d of diff) {
      const who = d.tenant ? 'tenant ' + d.tenant : 'template ' + d.template;
      const fields = Object.entries(d.fields || {});
      if (fields.length === 0) rows.push(h('tr', {}, td(who), td(d.action), td(''), td(''), td('')));
      for (const [f, v] of fields) {
        rows.push(h('tr', {}, td(who), td(d.action), td(f), td(JSON.stringify(v.before), 'before'), td(JSON.stringify(v.after), 'after')));
      }
    }
    const t = table('rollback-diff', ['subject', 'action', 'field', 'now', 'after rollback'], rows);
    t.classList.add('diff');
    return rows.length ? t : h('p', { class: 'muted', id: 'rollback-diff' }, 'Nothing would change.');
  }
  async function changes(root, _arg, live) {
    root.appendChild(h('h1', {}, 'Changes'));
    const preview = h('div', { class: 'panel', id: 'rollback-preview', hidden: true });
    const list = h('div', { class: 'panel' }, h('h2', {}, 'Versions'));
    const audit = h('div', { class: 'panel' }, h('h2', {}, 'Audit log (newest first)'));
    root.append(preview, list, audit);
    async function load() {
      const [v, a] = await Promise.all([api('GET', '/v1/versions'), api('GET', '/v1/audit?limit=100')]);
      if (!live()) return;
      while (list.childNodes.length > 1) list.removeChild(list.lastChild);
      while (audit.childNodes.length > 1) audit.removeChild(audit.lastChild);
      if (!v.ok) list.appendChild(refused(v));
      else list.appendChild(v.data.versions.length ? table('versions', ['version#', 'at', 'who', 'changed', ''],
        v.data.versions.map(x => h('tr', { 'data-version': x.version }, td(String(x.version), 'num'), td(when(x.at)), td(x.who),
          td(summary([...x.tenants.map(t => 'tenant ' + t), ...x.templates.map(t => 'template ' + t), x.main_file ? 'main file' : null].filter(Boolean))),
          h('td', {}, h('button', { type: 'button', class: 'secondary preview', onclick: () => showPreview(x.version) }, 'Preview rollback')))))
        : h('p', { class: 'muted' }, 'No versions kept yet.'));
      audit.appendChild(auditTable(a, 'audit'));
    }
    async function showPreview(n) {
      preview.hidden = false;
      clear(preview);
      preview.appendChild(h('h2', {}, 'Roll back to version ' + n + ': preview'));
      preview.scrollIntoView();
      const r = await api('POST', '/v1/versions/' + encodeURIComponent(n) + '/rollback?dry_run=true');
      if (!live()) return;
      if (!r.ok) { preview.appendChild(refused(r)); return; }
      const confirm = h('button', { type: 'button', class: 'danger', id: 'rollback-confirm' }, 'Roll back to version ' + n);
      const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => { preview.hidden = true; } }, 'Cancel');
      const result = h('p', { id: 'rollback-result' });
      confirm.addEventListener('click', async () => {
        confirm.disabled = true;
        const done = await api('POST', '/v1/versions/' + encodeURIComponent(n) + '/rollback');
        result.textContent = done.ok ? 'Rolled back to version ' + n + ': generation ' + done.data.generation + '.'
          : 'Refused: ' + done.status + ' ' + ((done.data && done.data.detail) || '');
        result.className = done.ok ? 'ok' : 'error';
        if (done.ok) await load();
      });
      preview.append(diffTable(r.data.diff || []), h('div', { class: 'row' }, confirm, cancel), result);
    }
    await load();
  }

  // ---- Pools --------------------------------------------------------------
  async function pools(root, _arg, live) {
    root.appendChild(h('h1', {}, 'Pools'));
    const box = h('div', { class: 'panel' });
    root.appendChild(box);
    async function load() {
      const r = await api('GET', '/v1/stats/pools');
      if (!live()) return;
      clear(box);
      if (!r.ok) { box.appendChild(refused(r)); return; }
      box.appendChild(table('pools', ['pool', 'tenants#', 'upstreams', 'requests#', 'connect errors#', 'proxy errors#'],
        r.data.pools.map(p => h('tr', {}, td(p.name), td(String(p.tenants), 'num'),
          h('td', {}, p.upstreams.map(u => h('div', {}, h('span', { class: 'badge ' + (u.state === 'up' ? 'good' : 'bad') }, u.state), ' ', u.addr,
            u.down_for_ms ? ' (skipped for ' + Math.ceil(u.down_for_ms / 1000) + ' s more)' : ''))),
          td(String(p.requests), 'num'), td(String(p.connect_errors), 'num'), td(String(p.proxy_errors), 'num')))));
      box.appendChild(h('p', { class: 'muted' }, 'An upstream is marked down for a while after a failed connect; requests go to the others meanwhile.'));
    }
    await load();
    every(5000, load);
  }

  // ---- Rollouts -----------------------------------------------------------
  async function rollouts(root, _arg, live) {
    root.appendChild(h('h1', {}, 'Rollouts'));
    const box = h('div', { class: 'panel' });
    const preview = h('div', { class: 'panel', id: 'rollout-preview', hidden: true });
    root.append(box, preview);
    async function load() {
      const r = await api('GET', '/v1/rollouts');
      if (!live()) return;
      clear(box);
      if (!r.ok) { box.appendChild(refused(r)); return; }
      if (!r.data.rollouts.length) {
        box.appendChild(h('p', { class: 'muted', id: 'rollouts-none' }, 'No rollouts. Add a [rollouts.<name>] section or PUT /v1/rollouts/{name}.'));
        return;
      }
      box.appendChild(table('rollouts', ['rollout', 'from → to', 'state', 'moved', 'tenants moved#', 'next step', 'automatic rollback', ''],
        r.data.rollouts.map(x => {
          const a = x.auto_rollback || {};
          const active = x.state === 'active';
          const actions = h('td', {},
            active && x.next_step != null ? h('button', { type: 'button', class: 'secondary promote', onclick: () => step(x, 'promote') }, 'Preview promote to ' + x.next_step + ' %') : null,
            active && x.moved_percent > 0 ? h('button', { type: 'button', class: 'secondary rollback', onclick: () => step(x, 'rollback') }, 'Preview rollback') : null);
          const tr = h('tr', {}, td(x.name), td(x.from_pool + ' → ' + x.to_pool),
            h('td', {}, h('span', { class: 'badge ' + (active ? 'good' : 'bad') }, x.state), x.reason ? ' ' + x.reason : ''),
            td(x.percent + ' % (' + x.moved_percent + ' % of candidates)'),
            td(x.moved + ' of ' + x.candidates, 'num'),
            td(x.next_step == null ? '—' : x.next_step + ' %'),
            td(a.enabled ? 'on: +' + a.margin_percent + ' points of 5xx over ' + a.window_secs + ' s, from ' + a.min_requests + ' requests' : 'off'),
            actions);
          tr.setAttribute('data-name', x.name);
          return tr;
        })));
      box.appendChild(h('p', { class: 'muted' }, 'A step is previewed first (the tenants it moves), then applied as one version under Changes. Complete a rollout through POST /v1/rollouts/{name}/complete.'));
    }
    // Preview a promote or a rollback (dry run), then apply it on confirm.
    async function step(x, action) {
      const path = '/v1/rollouts/' + encodeURIComponent(x.name) + '/' + action;
      const r = await api('POST', path + '?dry_run=true');
      if (!live()) return;
      clear(preview);
      preview.hidden = false;
      if (!r.ok) { preview.appendChild(refused(r)); return; }
      const counts = (r.data.moves && r.data.moves.counts) || {};
      const lists = (r.data.moves && r.data.moves.to_pool) || {};
      const pools = Object.keys(counts);
      preview.appendChild(h('h2', {}, (action === 'promote' ? 'Promote ' + x.name + ' to ' + x.next_step + ' %' : 'Roll back ' + x.name)));
      preview.appendChild(pools.length
        ? table('rollout-moves', ['to pool', 'tenants#', 'first of them'], pools.map(p => h('tr', {}, td(p), td(String(counts[p]), 'num'), td(summary(lists[p] || [], 8)))))
        : h('p', { class: 'muted', id: 'rollout-moves' }, 'No tenant would move.'));
      const result = h('p', { id: 'rollout-result' });
      const confirm = h('button', { type: 'button', class: 'danger', id: 'rollout-confirm' }, action === 'promote' ? 'Promote' : 'Roll back');
      const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => { preview.hidden = true; clear(preview); } }, 'Cancel');
      confirm.addEventListener('click', async () => {
        confirm.disabled = true;
        const done = await api('POST', path);
        if (!live()) return;
        result.textContent = done.ok
          ? x.name + ': ' + done.data.state + ', ' + done.data.moved_percent + ' % of candidates moved'
          : 'Refused: ' + ((done.data && (done.data.detail || done.data.title)) || done.status);
        await load();
      });
      preview.append(h('div', { class: 'row' }, confirm, cancel), result);
    }
    await load();
    every(5000, load);
  }

  // ---- start --------------------------------------------------------------
  document.addEventListener('DOMContentLoaded', async () => {
    $('signin').addEventListener('submit', async e => {
      e.preventDefault();
      $('signin-error').textContent = '';
      if (await signIn($('token').value.trim())) route();
    });
    $('signout').addEventListener('click', () => { signOut(''); location.hash = ''; });
    window.addEventListener('hashchange', route);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && await signIn(saved)) route();
  });
})();
