// loraprompt gallery, part 4 of 6: the details view and the metadata editor (dialogs), added to
// Gallery. The details table is rendered by the server with everything escaped.
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts;
  if (!LP || !LP.Gallery || LP.Gallery.prototype.showDetails) return;
  const { el, strengthValue } = LP;
  // the preferred weight as typed, "0.8" or "0,8" (as the cards' strength boxes); empty is 0; else NaN
  const decimal = (text) => {
    const v = String(text).trim() === "" ? 0 : strengthValue(text);
    return v === null ? NaN : v;
  };

  Object.assign(LP.Gallery.prototype, {
    openDialog(title) {
      const d = this.dialog;
      d.textContent = "";
      const head = el("div", "lp-dialog-head");
      head.appendChild(el("h3", null, title));
      const close = el("button", "lp-btn lp-close", "✕");
      close.type = "button";
      close.title = "Close";
      close.addEventListener("click", () => d.close());
      head.appendChild(close);
      const body = el("div", "lp-dialog-body");
      d.append(head, body);
      if (!d.open) d.showModal();
      return body;
    },

    async showDetails(c) {
      const body = this.openDialog(c.name);
      try {
        const data = await this.request("details?" + new URLSearchParams({ id: c.id }));
        body.innerHTML = data.html; // rendered and escaped by loraprompt.ui.cards.details_html
        if (data.preview) {
          const img = el("img", "lp-details-preview");
          img.alt = "";
          img.src = this.api + "/" + data.preview;
          body.prepend(img);
        }
      } catch (err) {
        body.appendChild(el("p", "lp-error", err.message));
      }
    },

    async showEditor(c) {
      const body = this.openDialog("Edit " + c.name);
      let data;
      try {
        data = await this.request("details?" + new URLSearchParams({ id: c.id }));
      } catch (err) {
        body.appendChild(el("p", "lp-error", err.message));
        return;
      }
      const form = el("form", "lp-editor");
      const fields = {};
      const labels = {};
      const add = (key, label, kind) => {
        labels[key] = label.replace(/ \(.*\)$/, "");
        const row = el("label", "lp-field");
        row.appendChild(el("span", null, label));
        let input;
        if (kind === "select") {
          input = el("select");
          for (const v of data.sd_versions) { const o = el("option", null, v); o.value = v; input.appendChild(o); }
          input.value = data.user[key] || "Unknown";
        } else if (kind === "checkbox") {
          input = el("input");
          input.type = "checkbox";
          input.checked = !!data.user[key];
        } else if (kind === "number") {
          // text, not type=number: that takes "0,8" only where the browser's locale writes a
          // decimal comma, and otherwise reads as empty (saved as 0, "default", without a word)
          input = el("input");
          input.type = "text";
          input.inputMode = "decimal";
          input.value = String(data.user[key] || 0);
        } else {
          input = el(kind === "area" ? "textarea" : "input");
          input.value = data.user[key] || "";
        }
        input.name = key;
        row.appendChild(input);
        form.appendChild(row);
        fields[key] = input;
      };
      add("description", "Description", "area");
      add("sd version", "SD version", "select");
      add("activation text", "Activation text", "text");
      add("preferred weight", "Preferred weight (0 = default)", "number");
      add("negative text", "Negative prompt", "text");
      add("notes", "Notes", "area");
      add("favorite", "Favorite", "checkbox");
      add("nsfw", "NSFW (blur the preview)", "checkbox");
      const status = el("p", "lp-editor-status");
      const save = el("button", "lp-btn lp-save", "Save");
      save.type = "submit";
      form.append(save, status);
      const valueOf = (input) => input.type === "checkbox" ? (input.checked || null)
        : input.inputMode === "decimal" ? decimal(input.value) : input.value;
      const opened = {};
      for (const [k, input] of Object.entries(fields)) opened[k] = valueOf(input);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        // only the fields changed in this dialog: the server writes them into the file as it is
        // now, so what A1111's editor or another tool wrote since the dialog opened is kept
        const values = {};
        for (const [k, input] of Object.entries(fields)) {
          if (valueOf(input) !== opened[k]) values[k] = valueOf(input);
        }
        const bad = Object.keys(values).find((k) => Number.isNaN(values[k]));
        if (bad) {
          status.textContent = "Not saved: " + labels[bad] + " must be a number such as 0.8 or 0,8, not \u201c" +
            fields[bad].value.trim() + "\u201d";
          status.classList.add("lp-error");
          return;
        }
        if (!Object.keys(values).length) {
          status.textContent = "Nothing changed";
          status.classList.remove("lp-error");
          return;
        }
        save.disabled = true;
        try {
          const r = await this.request("metadata", { id: c.id, values: values });
          this.replaceCard(r.card, "preferred weight" in values);
          for (const k of Object.keys(values)) opened[k] = values[k];
          status.textContent = "Saved to " + r.file;
          status.classList.remove("lp-error");
        } catch (err) {
          status.textContent = "Not saved: " + err.message;
          status.classList.add("lp-error");
        } finally {
          save.disabled = false;
        }
      });
      body.append(this.previewReplacer(c), form);
    },

    // A1111's "Replace preview": the result image the page shows (the chosen prompt target's tab
    // first) becomes the LoRA's `<stem>.png`; the dialog shows which image it will use.
    pickResultImage() {
      const chosen = this.targets[Number(this.targetSel.value) || 0];
      const order = chosen ? [chosen, ...this.targets.filter((t) => t !== chosen)] : [];
      for (const target of order) {
        for (const sel of target.images || []) {
          for (const img of document.querySelectorAll(sel)) {
            if (img.naturalWidth > 0 && /^(https?:|blob:|data:image\/)/.test(img.src)) return { img: img, label: target.label };
          }
        }
      }
      return null;
    },

    previewReplacer(c) {
      const box = el("div", "lp-preview-replace");
      const status = el("span", "lp-preview-status");
      const btn = el("button", "lp-btn lp-replace-preview", "Replace preview");
      btn.type = "button";
      const found = this.pickResultImage();
      if (found) {
        const thumb = el("img", "lp-replace-thumb");
        thumb.alt = "the " + found.label + " result";
        thumb.src = found.img.src;
        btn.title = "Save this " + found.label + " result as the preview of " + c.name;
        box.appendChild(thumb);
      } else {
        btn.disabled = true;
        status.textContent = "Generate an image to use it as this LoRA's preview";
      }
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          const blob = await (await fetch(found.img.src)).blob();
          const image = await new Promise((resolve, reject) => {
            const reader = new FileReader();
            reader.onload = () => resolve(reader.result);
            reader.onerror = () => reject(reader.error || new Error("the image could not be read"));
            reader.readAsDataURL(blob);
          });
          const r = await this.request("preview-image", { id: c.id, image: image });
          this.replaceCard(r.card, false);
          status.textContent = "Preview saved to " + r.file;
          status.classList.remove("lp-error");
        } catch (err) {
          status.textContent = "Preview not saved: " + err.message;
          status.classList.add("lp-error");
        } finally {
          btn.disabled = false;
        }
      });
      box.append(btn, status);
      return box;
    },

    replaceCard(card, weightEdited) {
      const i = this.cards.findIndex((c) => c.id === card.id);
      if (i < 0) return;
      card.uses = this.cards[i].uses;
      card.last_used = this.cards[i].last_used;
      card.ix = i;
      this.cards[i] = card;
      this.index = null; // the search index holds the old record's text
      this.byId.set(card.id, card);
      // a strength typed on the card stays (as in setData) unless this save set the preferred weight
      const s = this.strengths.get(card.id);
      if (!s || !s.touched || weightEdited) this.strengths.set(card.id, { te: card.weight, unet: card.weight });
      this.sortCards();
      this.applyFilter();
    },
  });
})();
