// loraprompt gallery, part 1 of 6 (loaded in this order: gallery-base.js, gallery-grid.js,
// gallery-cards.js, gallery-dialogs.js, gallery-duplicates.js, gallery.js): constants and DOM
// helpers shared by the other parts through window.LoraPromptGalleryParts. DOM only: tags are
// formatted by the server.
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts = window.LoraPromptGalleryParts || {};
  if (LP.el) return;

  const CARD_W = 176, CARD_H = 292, GAP = 8, OVERSCAN_ROWS = 2;
  const FAMILY_LABEL = { sd1: "SD1", sd2: "SD2", sdxl: "SDXL", sd3: "SD3", flux: "Flux", flux2: "Flux.2", wan: "Wan" };

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

  // A strength as typed: "0.8", "-1", ".5", "1e-1", or "0,8" with a decimal comma; null otherwise.
  function strengthValue(text) {
    const t = String(text).trim().replace(",", ".");
    if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return null;
    const v = Number(t);
    return Number.isFinite(v) ? v : null;
  }

  function fmtSize(n) {
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MB";
    if (n < 1024) return n + " B"; // a 0-byte (broken) file said "1 KB"
    return Math.round(n / 1024) + " KB";
  }

  // Substring search over every card's lowercased search text: the texts joined into one string by
  // "\n" (a search term holds no whitespace, so no match spans two cards) and scanned with indexOf,
  // which at 100,000 cards takes a fraction of the time of calling includes() on each text.
  class SearchIndex {
    constructor(texts) {
      this.texts = texts;
      this.text = texts.join("\n");
      this.starts = new Int32Array(texts.length + 1); // where each text begins in `text`
      let at = 0;
      for (let i = 0; i < texts.length; i++) { this.starts[i] = at; at += texts[i].length + 1; }
      this.starts[texts.length] = at;
    }

    find(terms) { // the indices, ascending, of the texts that contain every term (non-empty terms)
      const longest = terms.reduce((a, b) => (b.length > a.length ? b : a));
      const rest = terms.filter((t) => t !== longest);
      const { text, texts, starts } = this;
      const out = [];
      let i = 0;
      for (let pos = text.indexOf(longest); pos !== -1; pos = text.indexOf(longest, starts[++i])) {
        while (starts[i + 1] <= pos) i++; // matches come in order: O(texts) steps over the whole scan
        if (rest.every((t) => texts[i].includes(t))) out.push(i);
      }
      return out;
    }
  }

  Object.assign(LP, { CARD_W, CARD_H, GAP, OVERSCAN_ROWS, FAMILY_LABEL, el, gradioRoot, findField, setField, isTyping, fmtSize,
    strengthValue, SearchIndex });
})();
