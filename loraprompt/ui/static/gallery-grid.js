// loraprompt gallery, part 2 of 6: the Gallery class: toolbar, data loading and polling, folder tree,
// sort and filter (the card grid itself is part 3). Every string from the library is put in the page
// with textContent (never innerHTML).
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts;
  if (!LP || LP.Gallery) return;
  const { FAMILY_LABEL, el, SearchIndex } = LP;
  const FIRST_PAGE = 300; // cards asked for first: more than a screen holds

  class Gallery {
    constructor(root) {
      this.root = root;
      this.api = root.dataset.api.replace(/\/$/, "");
      this.targets = JSON.parse(root.dataset.targets || "[]");
      this.cards = [];
      this.total = 0;
      this.sorted = [];
      this.collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
      this.byId = new Map();
      this.view = [];
      this.hiddenByFamily = 0;
      this.family = null;
      this.generation = null;
      this.usageStamp = null;
      this.strengths = new Map();
      this.nodes = new Map();
      this.cursor = 0;
      this.folder = "";
      this.showAll = false;
      let saved = {};
      try {
        saved = JSON.parse(localStorage.getItem("loraprompt.gallery.sort") || "{}") || {};
      } catch (err) { /* another script's value, or a hand edit: default sort */ }
      this.sortKey = saved.key || "name";
      this.sortDesc = !!saved.desc;
      this.build();
      this.load();
      this.poll = setInterval(() => this.checkState(), Number(root.dataset.poll) || 4000);
    }

    url(path, params) {
      const q = params ? "?" + new URLSearchParams(params).toString() : "";
      return this.api + "/" + path + q;
    }

    async request(path, body) {
      const init = body === undefined ? {} : {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-LoraPrompt": "1" },
        body: JSON.stringify(body),
      };
      const r = await fetch(this.url(path), init);
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(data.detail || r.status + " " + r.statusText);
      return data;
    }

    build() {
      const r = this.root;
      r.textContent = "";
      const bar = el("div", "lp-toolbar");
      this.search = el("input", "lp-search");
      this.search.type = "search";
      this.search.placeholder = "Search names, tags, trigger words, notes (press /)";
      this.search.setAttribute("aria-label", "Search LoRAs");
      this.sortSel = el("select", "lp-sort");
      for (const [v, label] of [["name", "Name"], ["date", "Date"], ["size", "Size"], ["favorite", "Favorites first"],
        ["uses", "Most used"], ["recent", "Last used"]]) {
        const o = el("option", null, label);
        o.value = v;
        this.sortSel.appendChild(o);
      }
      this.sortSel.value = this.sortKey;
      this.sortSel.title = "Sort by";
      this.orderBtn = el("button", "lp-btn lp-order");
      this.orderBtn.type = "button";
      this.actLabel = el("label", "lp-check");
      this.actBox = el("input");
      this.actBox.type = "checkbox";
      this.actBox.checked = true;
      this.actLabel.append(this.actBox, document.createTextNode(" activation text"));
      this.actLabel.title = "Insert the activation text with the tag (Shift inverts)";
      this.targetSel = el("select", "lp-target");
      this.targets.forEach((t, i) => {
        const o = el("option", null, t.label);
        o.value = String(i);
        this.targetSel.appendChild(o);
      });
      this.targetSel.hidden = this.targets.length < 2;
      this.count = el("span", "lp-count");
      this.filterNote = el("span", "lp-filter-note");
      this.filterBtn = el("button", "lp-btn lp-filter-toggle");
      this.filterBtn.type = "button";
      this.refreshBtn = el("button", "lp-btn lp-refresh", "⟳ Refresh");
      this.refreshBtn.type = "button";
      this.refreshBtn.title = "Rescan the LoRA folders";
      this.dupBtn = el("button", "lp-btn lp-dup-toggle");
      this.dupBtn.type = "button";
      this.dupBtn.hidden = true;
      this.dupNote = el("span", "lp-dup-note");
      bar.append(this.search, this.sortSel, this.orderBtn, this.actLabel, this.targetSel, this.count,
        this.filterNote, this.filterBtn, this.dupBtn, this.dupNote, this.refreshBtn);
      this.status = el("div", "lp-status");
      this.status.setAttribute("role", "status");
      const body = el("div", "lp-body");
      this.tree = el("nav", "lp-tree");
      this.tree.setAttribute("aria-label", "Folders");
      this.scroller = el("div", "lp-scroller");
      this.scroller.tabIndex = 0;
      this.scroller.setAttribute("role", "listbox");
      this.scroller.setAttribute("aria-label", "LoRA cards");
      this.spacer = el("div", "lp-spacer");
      this.scroller.appendChild(this.spacer);
      body.append(this.tree, this.scroller);
      this.dialog = el("dialog", "lp-dialog");
      r.append(bar, this.status, body, this.dialog);

      this.search.addEventListener("input", () => { this.cursor = 0; this.applyFilter(); });
      this.search.addEventListener("keydown", (e) => {
        if (e.key === "Enter") { e.preventDefault(); this.insertAt(this.cursor, e.shiftKey); }
        if (e.key === "ArrowDown") { e.preventDefault(); this.scroller.focus(); this.moveCursor(0); }
      });
      this.sortSel.addEventListener("change", () => { this.sortKey = this.sortSel.value; this.saveSort(); });
      this.orderBtn.addEventListener("click", () => { this.sortDesc = !this.sortDesc; this.saveSort(); });
      this.filterBtn.addEventListener("click", () => { this.showAll = !this.showAll; this.applyFilter(); });
      this.refreshBtn.addEventListener("click", () => this.refresh());
      this.scroller.addEventListener("scroll", () => this.renderWindow());
      this.scroller.addEventListener("keydown", (e) => this.onGridKey(e));
      new ResizeObserver(() => this.layout()).observe(this.scroller);
      this.updateOrderButton();
    }

    saveSort() {
      localStorage.setItem("loraprompt.gallery.sort", JSON.stringify({ key: this.sortKey, desc: this.sortDesc }));
      this.updateOrderButton();
      this.sortCards();
      this.applyFilter();
    }

    updateOrderButton() {
      this.orderBtn.textContent = this.sortDesc ? "↓" : "↑";
      this.orderBtn.title = this.sortDesc ? "Descending" : "Ascending";
    }

    say(text, isError) {
      this.status.textContent = text || "";
      this.status.classList.toggle("lp-error", !!isError);
    }

    async load() {
      try {
        if (!this.cards.length) {
          // a big library: draw the first cards (in this page's sort) while the rest are made and sent
          const params = new URLSearchParams({ limit: String(FIRST_PAGE), sort: this.sortKey, desc: String(this.sortDesc) });
          const first = await this.request("cards?" + params.toString());
          if (!this.cards.length) this.setData(first);
          if (!first.partial) { setTimeout(() => this.checkState(), 0); return; }
          this.say("Showing the first " + first.cards.length + " of " + first.total + " LoRAs; loading the rest…");
        }
        const data = await this.request("cards");
        this.setData(data);
        setTimeout(() => this.checkState(), 0); // starts the server's background hashing now
      } catch (err) {
        this.say("Could not load the LoRA list: " + err.message, true);
      }
    }

    setData(data) {
      this.cards = data.cards;
      this.total = data.partial ? data.total : data.cards.length; // the library's, while the rest loads
      this.family = data.family;
      this.generation = data.generation;
      this.byId = new Map();
      this.cards.forEach((c, i) => { c.ix = i; this.byId.set(c.id, c); });
      this.index = null;
      this.searchIndex();
      this.setUsage(data.usage || {}, data.usage_stamp);
      this.sortCards();
      for (const c of this.cards) { // a strength typed on the card stays; an untouched one follows the preferred weight
        const s = this.strengths.get(c.id);
        if (!s || (!s.touched && (s.te !== c.weight || s.unet !== c.weight))) this.strengths.set(c.id, { te: c.weight, unet: c.weight });
      }
      this.buildTree();
      this.applyFilter();
      this.say(data.notice || "");
    }

    async checkState() {
      if (!this.root.isConnected) { clearInterval(this.poll); return; }
      if (this.root.offsetParent === null) return;
      try {
        const s = await this.request("state");
        if (s.generation !== this.generation) { await this.load(); return; }
        if (s.usage_stamp !== this.usageStamp) await this.loadUsage();
        if (s.family !== this.family) { this.family = s.family; this.applyFilter(); }
        if (this.checkDuplicates) await this.checkDuplicates(s);
      } catch (err) { /* the server is restarting; the next poll retries */ }
    }

    setUsage(usage, stamp) {
      // card id -> [times used, last use in ms]: generations made with each LoRA
      for (const c of this.cards) {
        const u = usage[c.id];
        c.uses = u ? u[0] : 0;
        c.last_used = u ? u[1] : 0;
      }
      this.usageStamp = stamp;
    }

    async loadUsage() {
      const data = await this.request("usage");
      this.setUsage(data.usage, data.stamp);
      this.sortCards();
      this.applyFilter();
    }

    async refresh() {
      this.refreshBtn.disabled = true;
      this.say("Rescanning…");
      try {
        this.setData(await this.request("refresh", {}));
      } catch (err) {
        this.say("Refresh failed: " + err.message, true);
      } finally {
        this.refreshBtn.disabled = false;
      }
    }

    buildTree() {
      const counts = new Map();
      for (const c of this.cards) {
        const parts = c.folder ? c.folder.split("/") : [];
        for (let i = 0; i <= parts.length; i++) {
          const key = parts.slice(0, i).join("/");
          counts.set(key, (counts.get(key) || 0) + 1);
        }
      }
      if (!counts.has(this.folder)) this.folder = "";
      const keys = [...counts.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
      this.tree.textContent = "";
      const list = el("ul", "lp-tree-list");
      for (const key of keys) {
        const depth = key ? key.split("/").length : 0;
        const item = el("li");
        const btn = el("button", "lp-folder", key ? key.split("/").pop() : "All");
        btn.type = "button";
        btn.style.paddingLeft = (4 + depth * 12) + "px";
        btn.dataset.folder = key;
        btn.title = key || "All folders";
        btn.appendChild(el("span", "lp-folder-count", counts.get(key)));
        btn.classList.toggle("lp-selected", key === this.folder);
        btn.addEventListener("click", () => {
          this.folder = key;
          for (const b of this.tree.querySelectorAll(".lp-folder")) b.classList.toggle("lp-selected", b === btn);
          this.cursor = 0;
          this.applyFilter();
        });
        item.appendChild(btn);
        list.appendChild(item);
      }
      this.tree.appendChild(list);
      this.tree.hidden = keys.length < 2;
    }

    sortCards() {
      const key = this.sortKey, sign = this.sortDesc ? -1 : 1, collator = this.collator;
      const byName = (a, b) => collator.compare(a.name, b.name);
      const cmp = key === "date" ? (a, b) => a.mtime - b.mtime
        : key === "size" ? (a, b) => a.size - b.size
          : key === "favorite" ? (a, b) => (b.favorite - a.favorite) * sign || byName(a, b)
            : key === "uses" ? (a, b) => b.uses - a.uses || b.last_used - a.last_used || byName(a, b)
              : key === "recent" ? (a, b) => b.last_used - a.last_used || byName(a, b)
                : byName;
      this.sorted = this.cards.slice().sort((a, b) => sign * cmp(a, b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      this.rank = new Int32Array(this.cards.length); // card index -> place in `sorted`
      this.sorted.forEach((c, r) => { this.rank[c.ix] = r; });
    }

    searchIndex() {
      if (!this.index) this.index = new SearchIndex(this.cards.map((c) => c.search));
      return this.index;
    }

    matching(terms) { // the cards holding every search term, in the page's sort
      const found = this.searchIndex().find(terms), cards = this.cards, rank = this.rank;
      if (found.length * 16 < cards.length) return found.sort((a, b) => rank[a] - rank[b]).map((i) => cards[i]);
      const hit = new Uint8Array(cards.length);
      for (const i of found) hit[i] = 1;
      return this.sorted.filter((c) => hit[c.ix]);
    }

    applyFilter() {
      const terms = this.search.value.toLowerCase().split(/\s+/).filter(Boolean);
      const reveal = this.search.value.trim().length >= 4; // A1111: dot-folder and dot-named cards only for such searches
      const folder = this.folder, prefix = folder ? folder + "/" : "", family = this.family, showAll = this.showAll;
      const misfit = (c) => !!(family && c.family && c.family !== family);
      const base = this.unsearched; // the view without a search, kept: clearing the search box is instant
      let view, hidden;
      if (!terms.length && base && base.sorted === this.sorted && base.folder === folder && base.family === family
        && base.showAll === showAll) {
        ({ view, hidden } = base);
      } else {
        view = [];
        hidden = 0;
        for (const c of terms.length ? this.matching(terms) : this.sorted) {
          if (folder && c.folder !== folder && !c.folder.startsWith(prefix)) continue;
          if (c.hidden && !reveal) continue;
          if (family && c.family && c.family !== family) { hidden++; if (!showAll) continue; }
          view.push(c);
        }
        if (!terms.length) this.unsearched = { sorted: this.sorted, folder, family, showAll, view, hidden };
      }
      if (this.dupMode && this.onlyDuplicates) view = this.onlyDuplicates(view);
      this.hiddenByFamily = hidden;
      this.view = view;
      this.misfit = misfit;
      this.cursor = Math.min(this.cursor, Math.max(0, view.length - 1));
      this.count.textContent = view.length + " of " + this.total;
      this.updateFilterNote();
      this.layout();
    }

    updateFilterNote() {
      const label = FAMILY_LABEL[this.family] || this.family;
      const n = this.hiddenByFamily;
      const plural = n === 1 ? "" : "s";
      if (!n) {
        this.filterNote.textContent = this.family ? "Loaded model: " + label : "";
        this.filterBtn.hidden = true;
      } else if (this.showAll) {
        this.filterNote.textContent = "Showing " + n + " card" + plural + " that do not fit " + label;
        this.filterBtn.textContent = "Hide them";
        this.filterBtn.hidden = false;
      } else {
        this.filterNote.textContent = n + " hidden by the " + label + " filter";
        this.filterBtn.textContent = "Show them";
        this.filterBtn.hidden = false;
      }
    }
  }

  LP.Gallery = Gallery;
})();
