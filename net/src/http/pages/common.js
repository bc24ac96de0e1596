// Shared by the tracker's and the peer's page: JSON fetches and building elements safely
// (names come from the network: text is always set as text, never as HTML).
async function getJson(path) {
  const response = await fetch(path);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.status);
  return body;
}
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}
function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}
function pieceMap(count, describe, decorate) {
  const detail = el('p', { class: 'detail' });
  const map = el('div', { class: 'map' });
  for (let i = 0; i < count; i++) {
    const cell = el('span', { class: 'piece', 'data-piece': i, title: describe(i) });
    decorate(cell, i);
    cell.onclick = () => { detail.textContent = describe(i); };
    map.append(cell);
  }
  return [map, detail];
}
function every(ms, job) { job(); setInterval(job, ms); }
