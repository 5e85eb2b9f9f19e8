"""A thin stand-in for Automatic1111's `modules` package (v1.10.1, commit 82a973c), enough to run
loraprompt's glue. Signatures are copied from A1111; bodies are this project's own minimal code.

Mirrored (file:line in A1111 v1.10.1):
- modules/extra_networks.py:9-10   extra_network_registry, extra_network_aliases
- modules/extra_networks.py:13     initialize()
- modules/extra_networks.py:18     register_extra_network(extra_network)
- modules/extra_networks.py:22     register_extra_network_alias(extra_network, alias)
- modules/extra_networks.py:31     class ExtraNetworkParams: __init__(self, items=None), __eq__
- modules/extra_networks.py:48     class ExtraNetwork: __init__(self, name), activate(self, p, params_list), deactivate(self, p)
- modules/extra_networks.py:90     lookup_extra_networks(extra_network_data)
- modules/extra_networks.py:126    activate(p, extra_network_data)
- modules/extra_networks.py:153    deactivate(p, extra_network_data)
- modules/extra_networks.py:175    re_extra_net
- modules/extra_networks.py:178    parse_prompt(prompt)
- modules/extra_networks.py:194    parse_prompts(prompts)
- modules/extra_networks.py:209    get_user_metadata(filename, lister=None)
- modules/util.py:96               class MassFileLister: find, exists, mctime, reset, update_file_entry (folders listed once, kept until reset)
- modules/script_callbacks.py:45   class CFGDenoiserParams: __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None)
- modules/script_callbacks.py:253  app_started_callback(demo, app)
- modules/script_callbacks.py:270  model_loaded_callback(sd_model)
- modules/script_callbacks.py:278  ui_tabs_callback()
- modules/script_callbacks.py:298  ui_settings_callback()
- modules/script_callbacks.py:330  cfg_denoiser_callback(params)
- modules/script_callbacks.py:378  infotext_pasted_callback(infotext, params)
- modules/script_callbacks.py:386  script_unloaded_callback()          (reversed order)
- modules/script_callbacks.py:394  before_ui_callback()                (reversed order)
- modules/script_callbacks.py:456-588  on_app_started, on_model_loaded, on_ui_tabs, on_ui_settings,
                                   on_cfg_denoiser, on_infotext_pasted, on_script_unloaded,
                                   on_before_ui: (callback, *, name=None)
- modules/scripts.py:14            AlwaysVisible
- modules/scripts.py:52            class Script: title(self), show(self, is_img2img), process(self, p, *args)
- modules/scripts.py:828           ScriptRunner.process(self, p)
- modules/options.py:13            class OptionInfo: __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None); info(self, info) (:44); needs_restart(self) (:52)
- modules/options.py:68            options_section(section_identifier, options_dict)
- modules/options.py:82            class Options: __init__(self, data_labels, restricted_opts), __getattr__ (:131), set(self, key, value, is_api=False, run_callbacks=True) (:144), onchange(self, key, func, call=True) (:229), add_option(self, key, info) (:256)
- modules/shared.py:14,44,47,76,77 cmd_opts, opts, sd_model, options_section, OptionInfo
- modules/paths_internal.py:32     models_path (re-exported by modules/paths.py)
- modules/processing.py:137        class StableDiffusionProcessing (fields used: prompt, all_prompts, batch_size, n_iter, steps, iteration, sd_model, extra_generation_params, comments, disable_extra_networks, is_hr_pass, scripts); sd_model is a property returning shared.sd_model (:261-267); comment(self, text) (:296)
- modules/processing.py:819        process_images(p) -> Processed (the extra-network steps of process_images_inner, :863)
- modules/infotext_utils.py:234    parse_generation_parameters(x, skip_fields=None) (no callbacks; :486-487 and api.py:597-598 run infotext_pasted after it)
- modules/ui_extra_networks.py:20  extra_pages; :21 allowed_dirs; :29 allowed_preview_extensions(); :89 register_page(page)
                                   (refills allowed_dirs); :97 fetch_file(filename="") (A1111's body verbatim); :180 quote_js(s)
- modules/ui_extra_networks.py:186 class ExtraNetworksPage: __init__(self, title) (self.lister: util.MassFileLister, which its file lookups go through), refresh(self) (:207), read_user_metadata(self, item, use_cache=True) (:210), search_terms_from_path(self, filename, possible_directories=None) (:225), create_item(self, name, index=None) (:625), list_items(self) (:628), allowed_directories_for_previews(self) (:631), get_sort_keys(self, path) (:634), find_preview(self, path) (:647), find_embedded_preview(self, path, name, metadata) (:660), find_description(self, path) (:671), link_preview(self, filename) (:220),
                                   create_user_metadata_editor(self, ui, tabname) (:686); path_is_parent(parent_path, child_path) (:795)
- modules/ui_extra_networks_user_metadata.py:11  class UserMetadataEditor: __init__(self, ui, tabname, page),
                                   get_user_metadata(self, name) (:35), create_extra_default_items_in_left_column(self) (:45),
                                   create_default_editor_elems(self) (:48), create_default_buttons(self) (:60),
                                   get_card_html(self, name) (:71), relative_path(self, path) (:92),
                                   get_metadata_table(self, name) (:99), put_values_into_components(self, name) (:118),
                                   write_user_metadata(self, name, metadata) (:131), save_user_metadata(self, name, desc, notes) (:141),
                                   setup_save_handler(self, button, func, components) (:148), create_editor(self) (:153),
                                   create_ui(self) (:166)
- modules/launch_utils.py:121,139  is_installed(package), run_pip(command, desc=None, live=...) (re-exported by launch.py)
- extensions-builtin/Lora/networks.py:731  loaded_networks; load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None) (:281)  -> builtin_lora/networks.py

Not A1111 API (the stand-in's own plumbing, kept minimal): ScriptRunner.load_module (A1111's
load_scripts + initialize_scripts), script_callbacks.callback_map/clear_callbacks keyed by category,
extra_networks.errors_shown (what modules.errors.display would print), script_callbacks.errors_reported
(what report_exception would print; every callback runs, as in A1111), scripts.errors_reported (what
ScriptRunner.process reports, scripts.py:828-834); conftest fails a test that left anything in these three, processing.Processed's
fields, builtin_lora/extra_networks_lora.ExtraNetworkLora.calls (what the built-in was asked),
infotext_utils.paste (a paste button: parse, then the infotext_pasted callbacks).
"""
