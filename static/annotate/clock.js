// Time on task: counts only while the page is visible and a task is on screen.

export function createClock() {
  let visibleMs = 0;
  let visibleSince = null;
  let running = false;

  document.addEventListener("visibilitychange", () => {
    if (document.hidden && visibleSince !== null) {
      visibleMs += performance.now() - visibleSince;
      visibleSince = null;
    } else if (!document.hidden && running && visibleSince === null) {
      visibleSince = performance.now();
    }
  });

  return {
    start(alreadyMs = 0) {
      running = true;
      visibleMs = alreadyMs;
      visibleSince = document.hidden ? null : performance.now();
    },
    stop() {
      running = false;
      visibleSince = null;
    },
    elapsedMs() {
      return Math.round(visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince));
    },
  };
}
