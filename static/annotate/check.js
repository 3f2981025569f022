// A classic script, not a module: it runs even where the rating page's modules (main.js and its
// imports) failed to load or to run, and then says so instead of leaving "Loading…" on screen.
// Module scripts run before the window's load event; main.js marks #stage when it has started.

window.addEventListener("load", () => {
  const stage = document.getElementById("stage");
  if (stage.dataset.started !== undefined) return;
  const banner = document.getElementById("banner");
  banner.textContent = "The rating page could not load its scripts. Reload the page; if this keeps happening, tell the project's admin.";
  banner.className = "banner error";
  banner.hidden = false;
  stage.replaceChildren();
});
