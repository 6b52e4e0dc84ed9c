// Shared helpers: API calls (with the optional bearer token), formatting.
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem('wft-token', decodeURIComponent(m[1])); history.replaceState(null, '', location.pathname + location.search); }
  return sessionStorage.getItem('wft-token');
})();
async function api(path) {
  const r = await fetch(path, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
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
async function resolveIdent(ident) {
  const r = await api('/api/lookup/' + encodeURIComponent(ident.trim()));
  return '/runs/' + encodeURIComponent(r.runId);
}
