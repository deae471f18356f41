// tenantgate console: a small line chart drawn as SVG with DOM calls only
// (no markup parsing, no inline style), for the CSP of /console/.
'use strict';
(function () {
  const NS = 'http://www.w3.org/2000/svg';

  function node(tag, attrs) {
    const n = document.createElementNS(NS, tag);
    for (const k of Object.keys(attrs || {})) n.setAttribute(k, String(attrs[k]));
    return n;
  }

  function fmt(v, unit) {
    if (unit === 's') {
      if (v >= 1) return v.toFixed(2) + ' s';
      return (v * 1000).toFixed(v < 0.01 ? 2 : 0) + ' ms';
    }
    if (v >= 1000) return (v / 1000).toFixed(1) + 'k';
    return v >= 10 ? v.toFixed(0) : v.toFixed(2);
  }

  // series: [{name, points: [[t, v], ...]}]; opts: {unit}. Returns a
  // wrapper element holding the SVG and its legend.
  function line(series, opts) {
    const W = 600, H = 220, L = 70, R = 10, T = 10, B = 28;
    const wrap = document.createElement('div');
    const svg = node('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img' });
    const all = series.flatMap(s => s.points);
    const unit = (opts && opts.unit) || '';
    if (all.length === 0) {
      const t = node('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'tick' });
      t.textContent = (opts && opts.empty) || 'no data yet (one point every 10 s)';
      svg.appendChild(t);
      wrap.appendChild(svg);
      return wrap;
    }
    const t0 = Math.min(...all.map(p => p[0])), t1 = Math.max(...all.map(p => p[0]));
    const vmax = Math.max(...all.map(p => p[1])) || 1;
    const x = t => L + (t1 === t0 ? (W - L - R) : (t - t0) / (t1 - t0) * (W - L - R));
    const y = v => T + (1 - v / vmax) * (H - T - B);
    svg.appendChild(node('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }));
    svg.appendChild(node('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }));
    for (const v of [0, vmax / 2, vmax]) {
      const t = node('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end', class: 'tick' });
      t.textContent = fmt(v, unit);
      svg.appendChild(t);
    }
    for (const [tt, anchor] of [[t0, 'start'], [t1, 'end']]) {
      const t = node('text', { x: x(tt), y: H - 4, 'text-anchor': anchor, class: 'tick' });
      t.textContent = new Date(tt * 1000).toLocaleTimeString();
      svg.appendChild(t);
    }
    const legend = document.createElement('div');
    legend.className = 'legend';
    series.forEach((s, i) => {
      if (s.points.length > 0) {
        const d = s.points.map((p, j) => (j ? 'L' : 'M') + x(p[0]).toFixed(1) + ' ' + y(p[1]).toFixed(1)).join(' ');
        svg.appendChild(node('path', { d: d, class: 's' + (i % 4) }));
      }
      const k = document.createElement('span');
      k.className = 'k' + (i % 4);
      k.textContent = s.name;
      legend.appendChild(k);
    });
    wrap.appendChild(svg);
    wrap.appendChild(legend);
    return wrap;
  }

  window.TgChart = { line: line, fmt: fmt };
})();
