// The side panels (guidelines, keyboard shortcuts): one open at a time. A panel takes focus when
// it opens and gives it back to where it was when it closes.

export function createPanels(ids) {
  const panel = (id) => document.getElementById(id);
  let focusBeforePanel = null;

  function open(id) {
    for (const other of ids) if (other !== id) panel(other).hidden = true;
    if (!ids.some((p) => panel(p).contains(document.activeElement))) focusBeforePanel = document.activeElement;
    panel(id).hidden = false;
    panel(id).focus();
  }

  // Closes whichever is open; false when none was.
  function close() {
    const open = ids.map(panel).filter((p) => !p.hidden);
    if (!open.length) return false;
    open.forEach((p) => (p.hidden = true));
    const back = focusBeforePanel;
    focusBeforePanel = null;
    if (back && back.isConnected && back !== document.body) back.focus();
    else if (document.getElementById("task-heading")) document.getElementById("task-heading").focus();
    return true;
  }

  const toggle = (id) => (panel(id).hidden ? open(id) : close());

  for (const id of ids) document.getElementById(`${id}-toggle`).addEventListener("click", () => toggle(id));
  document.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", close));
  return { toggle, close };
}
