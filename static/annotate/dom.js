// Building the rating page's DOM. Everything from the model or the prompt goes in as text nodes
// (textContent), never as HTML; invisible format characters are shown as marks.

// Bidirectional controls and other invisible format characters: shown as marks, never obeyed
// ("\u202Egpj.exe" would read as "exe.jpg"). The admin marks the same list (templatetags/text.py).
export const INVISIBLE = /[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/g;

// An element with attributes ("text" sets textContent, "on…" adds a listener) and children.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// The text as nodes: plain text, with each invisible format character replaced by a visible mark.
export function markedNodes(text) {
  if (text.search(INVISIBLE) === -1) return [document.createTextNode(text)]; // search ignores lastIndex
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INVISIBLE)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const code = `U+${match[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
    nodes.push(el("span", { class: "invisible-char", title: `Invisible character ${code}`, text: `⟪${code}⟫` }));
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

// A prompt or an output, as preformatted text (monospaced in code projects).
export function textBlock(text, { codeLike = false, extraClass = "" } = {}) {
  return el("pre", { class: `text ${codeLike ? "code" : ""} ${extraClass}`.trim() }, ...markedNodes(text));
}

// Characters as the server counts them (code points, not UTF-16 units).
export const charCount = (text) => text.length - (text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g) || []).length;
