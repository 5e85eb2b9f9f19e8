// loraprompt gallery, part 3 of 6: the virtualised card grid, added to Gallery: layout, the window
// of cards in view (nodes kept while they show the same record), one card, keyboard moves and
// inserting a card's tag. Every string from the library is put in the page with textContent.
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts;
  if (!LP || !LP.Gallery || LP.Gallery.prototype.renderWindow) return;
  const { CARD_W, CARD_H, GAP, OVERSCAN_ROWS, el, findField, setField, fmtSize, strengthValue } = LP;

  Object.assign(LP.Gallery.prototype, {
    layout() {
      const width = this.scroller.clientWidth || 800;
      this.cols = Math.max(1, Math.floor((width - GAP) / (CARD_W + GAP)));
      this.cardW = Math.max(CARD_W, Math.floor((width - GAP) / this.cols) - GAP);
      const rows = Math.ceil(this.view.length / this.cols);
      this.spacer.style.height = (rows * (CARD_H + GAP) + GAP) + "px";
      this.renderWindow(true);
    },

    renderWindow(force) {
      const rowH = CARD_H + GAP;
      const top = this.scroller.scrollTop, height = this.scroller.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / rowH) - OVERSCAN_ROWS);
      const last = Math.ceil((top + height) / rowH) + OVERSCAN_ROWS;
      const start = first * this.cols, end = Math.min(this.view.length, last * this.cols);
      if (!force && start === this.start && end === this.end) return;
      this.start = start;
      this.end = end;
      // a card's node is kept while it shows the same record the same way (a search, a sort or a
      // scroll only moves it); what a node shows of the family filter, the duplicate groups and the
      // usage is drawn when it is made, so a change of any of them makes new nodes
      if (this.drawnFamily !== this.family || this.drawnDups !== this.dupGroups || this.drawnUsage !== this.usageStamp) {
        this.drawnFamily = this.family;
        this.drawnDups = this.dupGroups;
        this.drawnUsage = this.usageStamp;
        for (const node of this.nodes.values()) node.remove();
        this.nodes.clear();
      }
      const wanted = new Map();
      for (let i = start; i < end; i++) wanted.set(this.view[i].id, i);
      for (const [id, node] of this.nodes) {
        const stale = node.lpCard !== this.byId.get(id);
        if ((stale || !wanted.has(id)) && !node.contains(document.activeElement)) { node.remove(); this.nodes.delete(id); }
      }
      for (const [id, i] of wanted) {
        let node = this.nodes.get(id);
        if (node && node.lpCard !== this.view[i]) { node.remove(); node = null; } // replaced while it had the focus
        if (!node) {
          node = this.makeCard(this.view[i]);
          node.lpCard = this.view[i];
          this.nodes.set(id, node);
          this.spacer.appendChild(node);
        }
        const row = Math.floor(i / this.cols), col = i % this.cols;
        node.style.transform = "translate(" + (GAP + col * (this.cardW + GAP)) + "px," + (GAP + row * rowH) + "px)";
        node.style.width = this.cardW + "px";
        node.classList.toggle("lp-cursor", i === this.cursor);
        node.setAttribute("aria-selected", i === this.cursor ? "true" : "false");
      }
    },

    makeCard(c) {
      const card = el("div", "lp-card");
      card.dataset.id = c.id;
      card.setAttribute("role", "option");
      card.classList.toggle("lp-nsfw", !!c.nsfw);
      card.classList.toggle("lp-misfit", !!this.misfit(c));
      card.title = c.name + (c.alias && c.alias !== c.name ? " (alias " + c.alias + ")" : "") + "\n" + c.folder
        + (c.uses ? "\nUsed in " + c.uses + " generation" + (c.uses === 1 ? "" : "s") + ", last "
          + new Date(c.last_used).toLocaleString() : "");
      const thumb = el("div", "lp-thumb");
      if (c.thumb) {
        const img = el("img");
        img.loading = "lazy";
        img.decoding = "async";
        img.alt = "";
        // a thumbnail that fails (a cover cached before it was checked, a preview deleted since the
        // list was made) gives the card its letter, not an empty picture
        img.onerror = () => img.replaceWith(el("span", "lp-initial", c.name.slice(0, 1).toUpperCase()));
        img.src = this.api + "/" + c.thumb;
        thumb.appendChild(img);
      } else {
        thumb.appendChild(el("span", "lp-initial", c.name.slice(0, 1).toUpperCase()));
      }
      const badge = el("span", "lp-badge lp-badge-" + (c.family || "unknown"), c.badge);
      badge.title = c.family_title;
      thumb.appendChild(badge);
      if (c.favorite) thumb.appendChild(el("span", "lp-fav", "★"));
      if (c.offline || c.error) {
        // the tag of such a card loads nothing now: say so on the card, not only in its details
        card.classList.add("lp-unusable");
        const state = el("span", "lp-state", c.offline ? "offline" : "⚠ broken");
        state.title = c.offline ? "Its folder or drive cannot be reached now: a tag would not load it until it is back"
          : "This file cannot be loaded: " + c.error;
        thumb.appendChild(state);
      }
      if (this.duplicateBadge) this.duplicateBadge(c, thumb);
      if (c.tag_note) {
        const warn = el("span", "lp-same-name lp-tag-note", "⚠ name");
        warn.title = c.tag_note + "\nThis card inserts <lora:" + c.tag_name + ":…>";
        thumb.appendChild(warn);
      } else if (c.tag_name !== c.name) {
        const same = el("span", "lp-same-name", "same name");
        same.title = "Another file is also named " + c.name + "; this card inserts <lora:" + c.tag_name + ":…>";
        thumb.appendChild(same);
      }
      const name = el("div", "lp-name", c.name);
      const trig = el("div", "lp-triggers");
      for (const w of c.triggers) trig.appendChild(el("span", "lp-chip", w));
      if (c.error) { // a file the reader refuses: its tag would only fail at Generate
        card.classList.add("lp-broken");
        card.title += "\nCannot be used: " + c.error;
        trig.appendChild(el("span", "lp-problem", "⚠ " + c.error));
      }
      const strengths = el("div", "lp-strengths");
      const s = this.strengths.get(c.id);
      for (const part of ["te", "unet"]) {
        const label = el("label", "lp-strength", part === "te" ? "TE" : "UNet");
        // a text box, not type=number: that one turns "0,8" into 8 in a dot locale and hides what was typed
        const input = el("input", "lp-" + part);
        input.type = "text";
        input.inputMode = "decimal";
        input.autocomplete = "off";
        input.spellcheck = false;
        input.value = String(s[part]);
        input.setAttribute("aria-label", (part === "te" ? "Text-encoder" : "UNet") + " strength of " + c.name);
        input.addEventListener("click", (e) => e.stopPropagation());
        const use = (v) => { s[part] = v; s.touched = true; input.removeAttribute("aria-invalid"); input.title = ""; };
        input.addEventListener("input", () => {
          const v = strengthValue(input.value);
          if (v !== null) { use(v); return; }
          input.setAttribute("aria-invalid", "true"); // shown, and the strength in use stays until a number is typed
          input.title = "not a number: " + s[part] + " is used";
        });
        input.addEventListener("blur", () => { input.value = String(s[part]); input.removeAttribute("aria-invalid"); input.title = ""; });
        input.addEventListener("keydown", (e) => {
          e.stopPropagation();
          if (e.key === "Enter") { e.preventDefault(); this.insert(c, e.shiftKey, card); }
          if (e.key === "ArrowUp" || e.key === "ArrowDown") {
            e.preventDefault();
            use(Math.round((s[part] + (e.key === "ArrowUp" ? 0.05 : -0.05)) * 100) / 100);
            input.value = String(s[part]);
          }
        });
        label.appendChild(input);
        strengths.appendChild(label);
      }
      const actions = el("div", "lp-actions");
      const info = el("button", "lp-btn lp-info", "Info");
      info.type = "button";
      info.title = "Details";
      info.addEventListener("click", (e) => { e.stopPropagation(); this.showDetails(c); });
      const edit = el("button", "lp-btn lp-edit", "Edit");
      edit.type = "button";
      edit.title = "Edit metadata";
      edit.addEventListener("click", (e) => { e.stopPropagation(); this.showEditor(c); });
      actions.append(info, edit, el("span", "lp-size", fmtSize(c.size)));
      card.append(thumb, name, trig, strengths, actions);
      card.addEventListener("click", (e) => {
        this.cursor = this.view.indexOf(c);
        this.insert(c, e.shiftKey, card);
      });
      return card;
    },

    moveCursor(delta) {
      if (!this.view.length) return;
      this.cursor = Math.max(0, Math.min(this.view.length - 1, this.cursor + delta));
      const rowH = CARD_H + GAP, row = Math.floor(this.cursor / this.cols);
      const top = row * rowH, bottom = top + rowH + GAP;
      if (top < this.scroller.scrollTop) this.scroller.scrollTop = top;
      else if (bottom > this.scroller.scrollTop + this.scroller.clientHeight) {
        this.scroller.scrollTop = bottom - this.scroller.clientHeight;
      }
      this.renderWindow(true);
    },

    onGridKey(e) {
      const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -this.cols, ArrowDown: this.cols,
        PageUp: -this.cols * 3, PageDown: this.cols * 3 };
      if (e.key in moves) { e.preventDefault(); this.moveCursor(moves[e.key]); }
      else if (e.key === "Home") { e.preventDefault(); this.moveCursor(-this.cursor); }
      else if (e.key === "End") { e.preventDefault(); this.moveCursor(this.view.length); }
      else if (e.key === "Enter") { e.preventDefault(); this.insertAt(this.cursor, e.shiftKey); }
    },

    insertAt(index, shift) {
      const c = this.view[index];
      if (c) this.insert(c, shift, this.nodes.get(c.id));
    },

    target() {
      return this.targets[Number(this.targetSel.value) || 0];
    },

    async insert(c, shift, node) {
      const target = this.target();
      const prompt = target && findField(target.prompt);
      if (!prompt) { this.say("No prompt box to insert into", true); return; }
      const negative = target.negative ? findField(target.negative) : null;
      const s = this.strengths.get(c.id);
      try {
        const r = await this.request("insert", {
          id: c.id, te: s.te, unet: s.unet, activation: this.actBox.checked !== !!shift,
          prompt: prompt.value, negative: negative ? negative.value : null,
        });
        setField(prompt, r.prompt);
        if (negative && r.negative !== null && r.negative !== undefined) setField(negative, r.negative);
        this.say(r.message);
        if (node) { node.classList.remove("lp-flash"); void node.offsetWidth; node.classList.add("lp-flash"); }
      } catch (err) {
        this.say("Could not insert " + c.name + ": " + err.message, true);
      }
    },
  });
})();
