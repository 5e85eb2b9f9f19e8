// loraprompt gallery, part 1 of 5 (loaded in this order: gallery-base.js, gallery-grid.js,
// gallery-dialogs.js, gallery-duplicates.js, gallery.js): constants and DOM helpers shared by the
// other parts through window.LoraPromptGalleryParts. DOM only: tags are formatted by the server.
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts = window.LoraPromptGalleryParts || {};
  if (LP.el) return;

  const CARD_W = 176, CARD_H = 292, GAP = 8, OVERSCAN_ROWS = 2;
  const FAMILY_LABEL = { sd1: "SD1", sd2: "SD2", sdxl: "SDXL", sd3: "SD3", flux: "Flux", wan: "Wan" };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function gradioRoot() {
    const app = document.querySelector("gradio-app");
    return (app && app.shadowRoot) || document;
  }

  function findField(elemId) {
    if (!elemId) return null;
    const host = gradioRoot().querySelector("#" + CSS.escape(elemId)) || document.getElementById(elemId);
    if (!host) return null;
    if (host.matches("textarea, input")) return host;
    return host.querySelector("textarea") || host.querySelector("input[type=text], input:not([type])");
  }

  function setField(field, value) {
    field.value = value;
    field.dispatchEvent(new Event("input", { bubbles: true }));
    field.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function isTyping(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  function fmtSize(n) {
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MB";
    return Math.max(1, Math.round(n / 1024)) + " KB";
  }

  Object.assign(LP, { CARD_W, CARD_H, GAP, OVERSCAN_ROWS, FAMILY_LABEL, el, gradioRoot, findField, setField, isTyping, fmtSize });
})();
