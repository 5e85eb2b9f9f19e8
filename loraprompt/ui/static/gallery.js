// loraprompt gallery, part 6 of 6: mounts a Gallery on every `.lp-gallery` element (now and as
// gradio adds them) and binds "/" to the visible gallery's search box.
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts;
  if (window.loraPromptGallery || !LP || !LP.Gallery) return;
  const { isTyping } = LP;

  function mountAll() {
    for (const root of document.querySelectorAll(".lp-gallery[data-api]:not([data-mounted])")) {
      root.dataset.mounted = "1";
      root.loraPromptGallery = new LP.Gallery(root);
    }
  }

  document.addEventListener("keydown", (e) => {
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey || isTyping(e.target)) return;
    const visible = [...document.querySelectorAll(".lp-gallery[data-mounted]")].find((r) => r.offsetParent !== null);
    if (!visible) return;
    e.preventDefault();
    visible.loraPromptGallery.search.focus();
    visible.loraPromptGallery.search.select();
  });

  window.loraPromptGallery = { mountAll: mountAll };
  mountAll();
  new MutationObserver(mountAll).observe(document.documentElement, { childList: true, subtree: true });
})();
