"""Chromium drives the gallery demo (a prompt box plus the gallery tab) on current gradio and on
gradio 3.41.2. The demo's loaded model is SDXL; screenshots land in artifacts/screenshots/."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import SDXL_KEYS, XSS, DemoServer, write_lora

pytestmark = [pytest.mark.browser]


def card(page: Any, name: str) -> Any:
    return page.locator(".lp-card", has=page.locator(".lp-name", has_text=name)).first


def prompt_value(page: Any) -> str:
    return str(page.locator("#demo_prompt textarea").input_value())


def received_by_server(page: Any) -> str:
    """The prompt and negative prompt as gradio's backend sees them (the demo echoes them)."""
    page.locator("#demo_show").click()
    box = page.locator("#demo_received textarea")
    page.wait_for_function("() => document.querySelector('#demo_received textarea').value !== ''")
    return str(box.input_value())


def show_all(page: Any) -> None:
    page.locator(".lp-filter-toggle", has_text="Show them").click()


def names_shown(page: Any) -> set[str]:
    return set(page.locator(".lp-card .lp-name").all_inner_texts())


def test_cards_render_with_badges_thumbnails_and_a_visible_filter(page: Any, demo: DemoServer) -> None:
    assert names_shown(page) == {"sketchy_lines", "watercolor"}  # the SDXL files
    assert page.locator(".lp-filter-note").inner_text() == "4 hidden by the SDXL filter"
    water = card(page, "watercolor")
    assert water.locator(".lp-badge").inner_text() == "SDXL"
    assert water.locator(".lp-chip").first.inner_text() == "wcstyle"
    water.locator("img").evaluate("img => img.decode()")
    assert water.locator("img").evaluate("img => img.naturalWidth") == 256  # the cached thumbnail
    show_all(page)
    assert len(names_shown(page)) == 6 and page.locator(".lp-card.lp-misfit").count() == 4
    assert page.locator(".lp-filter-note").inner_text() == "Showing 4 cards that do not fit SDXL"


CHIP_BOXES = """cards => cards.map(card => {
  const box = card.querySelector('.lp-triggers').getBoundingClientRect();
  return [...card.querySelectorAll('.lp-chip')].map(chip => {
    const r = chip.getBoundingClientRect();
    return {height: r.height, lineHeight: parseFloat(getComputedStyle(chip).lineHeight), top: r.top - box.top,
            bottom: r.bottom - box.top, boxHeight: box.height};
  });
})"""


def test_trigger_chips_are_one_line_high_and_never_cut_in_half(page: Any) -> None:
    """Issue 15 bug 2: a lone row of chips stretched to the box's height and a third row showed
    as a strip of empty chip tops under the chips."""
    # measured once the gallery's stylesheet is applied: CI once measured the chips unstyled (line
    # height "normal", every box 0 high) in the moment after the cards appeared
    page.wait_for_function("""() => [...document.querySelectorAll('.lp-card .lp-chip')].some(c =>
        c.getBoundingClientRect().height > 0 && !isNaN(parseFloat(getComputedStyle(c).lineHeight)))""", timeout=30_000)
    chips = [c for per_card in page.locator(".lp-card").evaluate_all(CHIP_BOXES) for c in per_card]
    sketchy = card(page, "sketchy_lines").locator(".lp-chip")
    assert sketchy.count() == 8  # MAX_CARD_TRIGGERS of its 10 tags: more than two rows hold
    assert chips and all(c["height"] == c["lineHeight"] for c in chips), chips
    visible = [c for c in chips if c["top"] < c["boxHeight"]]
    assert all(c["bottom"] <= c["boxHeight"] for c in visible), chips  # a row is shown whole or not at all
    assert len(visible) < len(chips)  # sketchy_lines' third row is cut off


def test_search_matches_notes_and_trigger_words_and_slash_focuses_it(page: Any) -> None:
    show_all(page)
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.classList.contains('lp-search')")
    page.keyboard.type("sunsets")  # in catgirl's notes
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 1")
    assert names_shown(page) == {"catgirl"}
    page.locator(".lp-search").fill("wcstyle")  # watercolor's trigger phrase
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 1")
    assert names_shown(page) == {"watercolor"}
    page.locator(".lp-folder[data-folder='styles']").click()
    page.locator(".lp-search").fill("")
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 3")
    assert names_shown(page) == {"watercolor", "sketchy_lines", "ink_wash"}


# The page's search index (every card's search text joined into one string) against includes()
# on each text: the same matches, none across two texts, several terms in any order.
SEARCH_AGREES = """() => {
  const texts = ['styles/ink_wash.safetensors\\nink_wash', 'wash', '', 'ab\\ncd', 'x'.repeat(40) + '\u00e9t\u00e9', 'ink'];
  const index = new window.LoraPromptGalleryParts.SearchIndex(texts);
  const queries = [['ink'], ['wash'], ['sh'], ['hw'], ['inkwash'], ['bc'], ['ab', 'cd'], ['cd', 'ab'], ['wash', 'ink'],
    ['\u00e9t\u00e9'], ['x\u00e9'], ['ink', 'ink'], ['zz'], ['s', 'styles', 'safe']];
  return queries.map((terms) => [terms, index.find(terms),
    texts.flatMap((t, i) => (terms.every((q) => t.includes(q)) ? [i] : []))]); }"""


def test_the_search_index_finds_what_includes_finds(page: Any) -> None:
    for terms, found, expected in page.evaluate(SEARCH_AGREES):
        assert found == expected, terms


MARK_CARDS = "() => document.querySelectorAll('.lp-card').forEach((n) => { n.dataset.drawnBefore = '1'; })"


def test_a_search_moves_the_cards_it_keeps_and_a_model_switch_redraws_them(page: Any) -> None:
    """A keystroke rebuilt every card's DOM: now a card still shown keeps its node (a typed
    strength stays), while a model switch redraws the cards (the misfit shading follows)."""
    show_all(page)
    card(page, "watercolor").locator(".lp-te").fill("0.35")
    page.evaluate(MARK_CARDS)
    page.locator(".lp-search").fill("styles")
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 3")
    assert names_shown(page) == {"watercolor", "sketchy_lines", "ink_wash"}
    assert page.locator(".lp-card[data-drawn-before]").count() == 3
    page.locator(".lp-search").fill("")
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 6")
    assert page.locator(".lp-card[data-drawn-before]").count() == 3  # the other three were drawn anew
    assert card(page, "watercolor").locator(".lp-te").input_value() == "0.35"
    try:
        page.locator("#demo_family label", has_text="sd1").click()
        page.wait_for_function("() => document.querySelector('.lp-filter-note').textContent.includes('SD1')")
        page.wait_for_function("() => !document.querySelector('.lp-card[data-drawn-before]')")
        misfits = set(page.locator(".lp-card.lp-misfit .lp-name").all_inner_texts())
        assert misfits == {"watercolor", "sketchy_lines"}
        assert card(page, "watercolor").locator(".lp-te").input_value() == "0.35"  # kept per card, not per node
    finally:
        page.locator("#demo_family label", has_text="sdxl").click()
        page.wait_for_function("() => document.querySelector('.lp-filter-note').textContent.includes('SDXL')")


DUPLICATE_TITLE = """() => {
  const g = document.querySelector('.lp-gallery').loraPromptGallery, c = g.cards[0], thumb = document.createElement('div');
  g.dupGroups = [{kind: 'same-file', ids: [c.id, ...Array.from({length: 30}, (_, i) => '0/copy_' + i + '.safetensors')]}];
  g.dupOf = new Map([[c.id, 0]]);
  g.duplicateBadge(c, thumb);
  return thumb.querySelector('.lp-dup').title; }"""


def test_a_duplicate_badge_names_twenty_other_files_of_a_big_group(page: Any) -> None:
    """A group can hold thousands of files (a badge listed them all, per card drawn)."""
    lines = page.evaluate(DUPLICATE_TITLE).split("\n")
    assert lines == ["same file as:", *(f"copy_{i}.safetensors" for i in range(20)), "and 10 more"]


def test_click_inserts_the_tag_and_strengths_change_it(page: Any) -> None:
    show_all(page)
    cat = card(page, "catgirl")
    assert cat.locator(".lp-te").input_value() == "0.7"  # the sidecar's preferred weight
    cat.locator(".lp-name").click()
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value !== ''")
    assert prompt_value(page) == "<lora:catgirl:0.7>, catgirl, cat ears"
    assert page.locator("#demo_negative textarea").input_value() == "extra tails"
    cat.locator(".lp-te").fill("0.5")
    cat.locator(".lp-unet").fill("1.25")
    cat.locator(".lp-thumb").click()
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value.includes('0.5')")
    assert prompt_value(page) == "<lora:catgirl:0.5:1.25>, catgirl, cat ears"
    assert received_by_server(page) == "<lora:catgirl:0.5:1.25>, catgirl, cat ears || extra tails"
    cat.locator(".lp-thumb").click()  # same strengths again: the tag leaves, as in A1111
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value === ''")
    assert page.locator(".lp-status").inner_text() == "Removed <lora:catgirl:0.5:1.25>"


def test_strength_boxes_take_a_decimal_comma_and_never_hide_what_is_used(page: Any) -> None:
    """Found by a user review: the boxes were type=number, which turned "0,8" into 8 (and a cleared
    box silently kept the old value). Now "0,8" is 0.8; text that is no number is marked and the
    strength in use stays, shown again when the box is left; arrow keys step by 0.05."""
    show_all(page)
    cat = card(page, "catgirl")
    te, unet = cat.locator(".lp-te"), cat.locator(".lp-unet")
    te.fill("0,8")
    unet.fill("abc")
    assert unet.get_attribute("aria-invalid") == "true" and te.get_attribute("aria-invalid") is None
    unet.press("Tab")  # left: the box shows the strength in use again
    assert unet.input_value() == "0.7" and unet.get_attribute("aria-invalid") is None
    unet.press("ArrowUp")
    assert unet.input_value() == "0.75"
    cat.locator(".lp-name").click()
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value !== ''")
    assert prompt_value(page) == "<lora:catgirl:0.8:0.75>, catgirl, cat ears"
    cat.locator(".lp-name").click()  # the same strengths again: the tag leaves
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value === ''")


def test_keyboard_enter_inserts_and_shift_enter_leaves_out_the_activation_text(page: Any) -> None:
    show_all(page)
    page.locator(".lp-search").fill("catgirl")
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 1")
    page.locator(".lp-search").press("Shift+Enter")
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value !== ''")
    assert prompt_value(page) == "<lora:catgirl:0.7>"
    page.locator(".lp-search").fill("")
    page.locator(".lp-scroller").focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    third = page.locator(".lp-card.lp-cursor .lp-name").inner_text()
    assert third == "editable"  # sorted by name: the hostile name, catgirl, editable, ...
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value.includes('editable')")
    assert prompt_value(page) == "<lora:catgirl:0.7>, <lora:editable:1>"


def test_filter_follows_a_model_switch_without_refresh(page: Any) -> None:
    try:
        page.locator("#demo_family label", has_text="sd1").click()
        page.wait_for_function("() => document.querySelector('.lp-filter-note').textContent.includes('SD1')")
        assert page.locator(".lp-filter-note").inner_text() == "2 hidden by the SD1 filter"
        assert names_shown(page) == {"catgirl", "ink_wash", "editable", XSS}
    finally:
        page.locator("#demo_family label", has_text="sdxl").click()
        page.wait_for_function("() => document.querySelector('.lp-filter-note').textContent.includes('SDXL')")


def test_metadata_editor_saves_the_sidecar(page: Any, demo: DemoServer) -> None:
    show_all(page)
    editable = card(page, "editable")
    editable.locator(".lp-edit").click()
    form = page.locator(".lp-editor")
    weight = form.locator("input[name='preferred weight']")
    # a weight that is no number is refused by name, not saved as 0 ("default") without a word
    weight.fill("")
    weight.press_sequentially("0.6.")
    form.locator(".lp-save").click()
    page.wait_for_function("() => document.querySelector('.lp-editor-status').textContent.startsWith('Not saved')")
    assert "Preferred weight must be a number" in form.locator(".lp-editor-status").inner_text()
    assert not (demo.lora / "editable.json").exists()
    form.locator("input[name='activation text']").fill("edited words")
    weight.fill("")
    weight.press_sequentially("0,6")  # a decimal comma, as a European user types it
    form.locator("select[name='sd version']").select_option("SDXL")
    form.locator(".lp-save").click()
    page.wait_for_function("() => document.querySelector('.lp-editor-status').textContent.startsWith('Saved')")
    assert form.locator(".lp-editor-status").inner_text() == "Saved to editable.json"
    saved = json.loads((demo.lora / "editable.json").read_text(encoding="utf-8"))
    assert saved == {"sd version": "SDXL", "activation text": "edited words", "preferred weight": 0.6}  # only what changed
    page.locator(".lp-close").click()
    editable = card(page, "editable")
    assert editable.locator(".lp-badge").inner_text() == "SDXL" and editable.locator(".lp-te").input_value() == "0.6"
    editable.locator(".lp-name").click()
    page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value !== ''")
    assert prompt_value(page) == "<lora:editable:0.6>, edited words"


def _rewrite_in_place(path: Any, values: dict[str, Any]) -> None:
    """As A1111's metadata editor saves an existing `<stem>.json`: open("w"), the folder untouched."""
    with open(path, "w", encoding="utf8") as file:
        json.dump(values, file, indent=4, ensure_ascii=False)


def test_edits_made_outside_the_gallery_are_kept_and_shown(page: Any, demo: DemoServer) -> None:
    """A1111's editor rewrites the sidecar while the gallery's editor is open: saving in the gallery
    writes only what was changed there. Then the card follows further outside edits of the
    preferred weight, unless a strength was typed on the card."""
    show_all(page)
    side = demo.lora / "editable.json"
    card(page, "editable").locator(".lp-edit").click()
    form = page.locator(".lp-editor")
    form.locator("input[name='activation text']").wait_for()
    _rewrite_in_place(side, {"sd version": "SDXL", "activation text": "vulpine", "preferred weight": 0.3, "notes": "from a1111"})
    form.locator("input[name='favorite']").check()
    form.locator(".lp-save").click()
    page.wait_for_function("() => document.querySelector('.lp-editor-status').textContent.startsWith('Saved')")
    assert json.loads(side.read_text(encoding="utf-8")) == {
        "sd version": "SDXL", "activation text": "vulpine", "preferred weight": 0.3, "notes": "from a1111", "favorite": True}
    page.locator(".lp-close").click()
    assert card(page, "editable").locator(".lp-te").input_value() == "0.3"
    _rewrite_in_place(side, {"sd version": "SDXL", "activation text": "lupine", "preferred weight": 0.9})
    page.wait_for_function("""() => [...document.querySelectorAll('.lp-card')].some(c =>
        c.querySelector('.lp-name').textContent === 'editable' && c.querySelector('.lp-te').value === '0.9')""")
    editable = card(page, "editable")
    assert editable.locator(".lp-chip").first.inner_text() == "lupine" and editable.locator(".lp-unet").input_value() == "0.9"
    editable.locator(".lp-te").fill("0.5")
    _rewrite_in_place(side, {"sd version": "SDXL", "activation text": "canine", "preferred weight": 1.1})
    page.wait_for_function("""() => [...document.querySelectorAll('.lp-card')].some(c =>
        c.querySelector('.lp-name').textContent === 'editable' && c.querySelector('.lp-chip').textContent === 'canine')""")
    editable = card(page, "editable")
    assert (editable.locator(".lp-te").input_value(), editable.locator(".lp-unet").input_value()) == ("0.5", "0.9")
    editable.locator(".lp-edit").click()  # a save of other fields keeps the typed strength too
    form = page.locator(".lp-editor")
    form.locator("textarea[name='notes']").fill("only notes")
    form.locator(".lp-save").click()
    page.wait_for_function("() => document.querySelector('.lp-editor-status').textContent.startsWith('Saved')")
    page.locator(".lp-close").click()
    assert card(page, "editable").locator(".lp-te").input_value() == "0.5"
    card(page, "editable").locator(".lp-edit").click()  # a save of the preferred weight sets both
    form = page.locator(".lp-editor")
    form.locator("input[name='preferred weight']").fill("0.7")
    form.locator(".lp-save").click()
    page.wait_for_function("() => document.querySelector('.lp-editor-status').textContent.startsWith('Saved')")
    page.locator(".lp-close").click()
    editable = card(page, "editable")
    assert (editable.locator(".lp-te").input_value(), editable.locator(".lp-unet").input_value()) == ("0.7", "0.7")


def test_hostile_names_and_metadata_stay_text(page: Any) -> None:
    show_all(page)
    page.locator(".lp-search").fill("onerror")
    page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 1")
    hostile = page.locator(".lp-card").first
    assert hostile.locator(".lp-name").inner_text() == XSS
    hostile.locator(".lp-info").click()
    table = page.locator(".lp-details-table").first
    table.wait_for()
    assert XSS + "\nsecond line" in table.inner_text()
    assert page.locator("img[src='x']").count() == 0 and page.dialogs == []


def test_details_view_shows_metadata_with_sources(page: Any) -> None:
    show_all(page)
    card(page, "catgirl").locator(".lp-info").click()
    table = page.locator(".lp-details-table").first
    table.wait_for()
    text = table.inner_text()
    for needle in ("catgirl_v2", "great with sunsets", "Network dim", "16", "(catgirl.json)", "(header)",
                   "Tensor hash (A1111, AutoV3)"):
        assert needle in text
    preview = page.locator(".lp-details-preview")
    preview.evaluate("img => img.decode()")
    assert preview.evaluate("img => img.naturalWidth") == 640


def test_refresh_shows_a_new_file_and_date_sort_puts_it_first(page: Any, demo: DemoServer) -> None:
    write_lora(demo.lora / "styles" / "brand_new.safetensors", SDXL_KEYS, {"modelspec.trigger_phrase": "fresh"}, seed=7)
    page.locator(".lp-refresh").click()
    card(page, "brand_new").wait_for()
    page.locator(".lp-sort").select_option("date")
    if page.locator(".lp-order").inner_text() == "↑":
        page.locator(".lp-order").click()
    page.wait_for_function("() => document.querySelector('.lp-card.lp-cursor .lp-name').textContent === 'brand_new'")
    first = page.evaluate("""() => [...document.querySelectorAll('.lp-card')]
        .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top
                        || a.getBoundingClientRect().left - b.getBoundingClientRect().left)[0]
        .querySelector('.lp-name').textContent""")
    assert first == "brand_new"


def test_a_corrupt_saved_sort_does_not_stop_the_gallery(page: Any) -> None:
    page.evaluate("localStorage.setItem('loraprompt.gallery.sort', '{not json')")
    page.reload()
    page.locator(".lp-card").first.wait_for(timeout=30_000)
    assert "watercolor" in names_shown(page)  # other tests of this module add cards
    assert page.locator(".lp-sort").input_value() == "name"  # the default sort
    page.evaluate("localStorage.removeItem('loraprompt.gallery.sort')")
