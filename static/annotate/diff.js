// A word diff of a fix against the output it rewrites, shown as <ins>/<del> under the fix box.

import { el, markedNodes } from "./dom.js";

function wordDiff(before, after) {
  const a = before.split(/(\s+)/);
  const b = after.split(/(\s+)/);
  if (a.length * b.length > 4_000_000) return [["=", after]]; // too long to diff in the page
  const table = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--)
    for (let j = b.length - 1; j >= 0; j--)
      table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
  const parts = [];
  let i = 0;
  let j = 0;
  const push = (op, text) => {
    const last = parts[parts.length - 1];
    if (last && last[0] === op) last[1] += text;
    else parts.push([op, text]);
  };
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      push("=", a[i]);
      i++;
      j++;
    } else if (table[i + 1][j] >= table[i][j + 1]) push("-", a[i++]);
    else push("+", b[j++]);
  }
  while (i < a.length) push("-", a[i++]);
  while (j < b.length) push("+", b[j++]);
  return parts;
}

export function renderDiff(target, before, after) {
  const nodes = wordDiff(before, after).flatMap(([op, text]) =>
    op === "=" ? markedNodes(text) : [el(op === "+" ? "ins" : "del", {}, ...markedNodes(text))],
  );
  target.replaceChildren(...nodes);
}
