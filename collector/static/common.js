// Shared helpers: API calls (with the optional bearer token), formatting.
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem('wft-token', decodeURIComponent(m[1])); history.replaceState(null, '', location.pathname + location.search); }
  return sessionStorage.getItem('wft-token');
})();
// `early`: the answer to this very request, already asked for (run.html asks for the waterfall first).
async function api(path, early) {
  const r = await (early || fetch(path, { headers: token ? { Authorization: 'Bearer ' + token } : {} }));
  if (r.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search); }
  if (!r.ok) { const e = new Error((await r.text()) || r.statusText); e.status = r.status; throw e; }
  return r.json();
}
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const shortName = (n) => (n || '').split('//').pop() || n || '?';
function fmtMs(ms) {
  if (ms == null) return '–';
  if (ms < 1) return ms.toFixed(2) + ' ms';
  if (ms < 1000) return Math.round(ms) + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(2) + ' s';
  return Math.floor(ms / 60000) + ' m ' + Math.round((ms % 60000) / 1000) + ' s';
}
const fmtTime = (iso) => iso ? new Date(iso).toLocaleString() : '–';
const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;
const fmtClock = (ns, precise) => ns == null ? '–' : new Date(ns / 1e6).toLocaleTimeString(undefined,
  precise ? { hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3 } : undefined);
// The first date a page formats loads the locale's data (20-40 ms in Chromium): a page calls this while
// its data is on its way, so that its first draw does not wait for that after the data arrived.
function warmDateFormats() {
  fmtTime(new Date(0).toISOString());
  fmtClock(0, true);
}
// A wait's age, coarse as a person reads it: 42 s, 3 m 12 s, 2 h 5 m, 3 d 4 h.
function fmtAge(ms) {
  if (ms == null || !isFinite(ms)) return '–';
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' m ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' m';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}
// "90s", "5m", "2h", "1d" or plain seconds → ms (null when it is none of these).
function parseDuration(text) {
  const m = String(text || '').trim().match(/^(\d+(?:\.\d+)?)\s*([smhd]?)$/);
  return m ? parseFloat(m[1]) * { '': 1000, s: 1000, m: 60000, h: 3600000, d: 86400000 }[m[2]] : null;
}
// Past this a wait is highlighted: the runs page's "stuck" filter when set there, else 5 minutes.
const stuckMs = () => parseDuration(new URLSearchParams(location.search).get('stuck') || localStorage.getItem('wft-stuck') || '') ?? 300000;
// What a live run waits on (the API's waitingOn items), in words.
function fmtWait(w) {
  const step = shortName(w.name);
  switch (w.kind) {
    case 'hook': return 'hook ' + (w.token || w.id);
    case 'sleep': return w.resumeAt ? 'sleep until ' + fmtTime(w.resumeAt) : 'sleep';
    case 'queued': return `step ${step} queued`;
    case 'step': return `step ${step} running` + (w.attempt > 1 ? ` (attempt ${w.attempt})` : '');
    case 'retry': return `retry ${w.attempt || ''} of ${step}`.replace('  ', ' ') + (w.resumeAt ? ' at ' + fmtTime(w.resumeAt) : '');
    case 'payload': return 'hook ' + (w.token || w.id) + ': another payload, or its next turn';
    case 'turn': return 'its next turn (the workflow to be replayed)';
    default: return w.kind;
  }
}
// One wait with how long it has lasted (at `nowNs`), marked `stuck` past the threshold.
function waitHtml(w, nowNs) {
  const age = nowNs - w.sinceNs;
  const stuck = age / 1e6 >= stuckMs();
  return `<span class="wait ${esc(w.kind)}${stuck ? ' stuck' : ''}" title="since ${esc(fmtTime(w.since))}">${esc(fmtWait(w))}`
    + ` <span class="age">${esc(fmtAge(age / 1e6))}</span></span>`;
}
const waitsHtml = (ws, nowNs, more) => (ws || []).map((w) => waitHtml(w, nowNs)).join(' ')
  + (more > (ws || []).length ? ` <span class="dim">+${more - ws.length} more</span>` : '');
async function resolveIdent(ident) {
  const r = await api('/api/lookup/' + encodeURIComponent(ident.trim()));
  return '/runs/' + encodeURIComponent(r.runId);
}
