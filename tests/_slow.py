"""Which tests are ``slow`` (measured, not guessed), and which docstring examples do not run.

``make test`` runs everything; ``make test-fast`` leaves out what is marked ``slow`` (and
``realdata``). tests/conftest.py marks ``slow`` every test named here by ``<file>::<function>``
(all its parameters). A test may also carry ``@pytest.mark.slow`` itself.
``tests/house/test_tiers.py`` checks that every name here exists.

How the list was made: the whole suite but ``realdata`` in one process with ``--durations``-like
timing per test (setup, call and teardown; a module fixture counts in its first test), each test
stopped at 25 s, on a 2-core x86_64 machine under a load of about 15 (a test's wall time there is
about 4.5 times its CPU time). Slow: stopped at 25 s (or its module fixture was), or about 2 s of
CPU and more (the larger of its CPU time and its wall time / 4.5). The rest is the fast tier:
732 tests and docstring examples, 3 min 4 s with ``-n 2`` under a load of about 3 (190 s of
CPU), before the two slowest of them moved here. Measure again with::

    xvfb-run -a .venv/bin/pytest -m "not realdata" --durations=0 -q

and move names in or out so that ``make test-fast`` stays within 3 minutes on 2 cores.
"""

from __future__ import annotations

#: ``<file name>::<test function>`` of the tests marked slow: the wall seconds measured (all its
#: parameters together; 25.0: stopped there)
SLOW: dict[str, float] = {
    # the two slowest of the fast tier in its first timed run (load about 3), moved out for margin
    "test_pretrain.py::test_probe_scores_classes_and_continuous_targets_on_held_out_groups": 9.5,
    "test_spot_auto.py::test_a_cnn_encoder_file_travels_inside_the_model": 12.6,
    # measured on the whole suite (load about 1, 2 processes)
    "test_spot_benchmark.py::test_peer_and_heads_are_rows_of_the_same_run": 11.9,
    # measured on the whole suite (load about 15)
    "test_cell_morphology.py::"
    "test_a_second_stain_that_carries_the_class_improves_held_out_cells": 25.0,
    "test_cell_morphology.py::"
    "test_cell_morphology_beats_a_cell_intensity_baseline_and_round_trips": 25.0,
    "test_cell_morphology.py::test_stacked_model_uses_only_cells_the_cnn_never_trained_on": 25.0,
    "test_cli.py::test_demo_runs_every_job_and_scores_it_on_held_out_data": 25.0,
    "test_cli.py::test_predict_writes_what_the_python_api_predicts": 25.0,
    "test_datasets.py::test_cohort_bulk_and_labels": 10.8,
    "test_datasets.py::test_default_is_multiscale": 15.4,
    "test_embed.py::test_a_list_of_encoders_concatenates_their_features": 10.0,
    "test_embed.py::test_handcrafted_features_tell_regions_apart_on_held_out_tiles": 9.8,
    "test_io_safety.py::"
    "test_overwrite_replaces_what_the_same_step_wrote_also_after_a_round_trip": 15.0,
    "test_io_safety.py::test_predict_overwrite_replaces_its_own_store": 20.8,
    "test_io_user_files.py::test_cli_predicts_on_a_png_with_mpp": 14.7,
    "test_mil.py::test_attention_check_scores_held_out_tiles": 25.0,
    "test_mil.py::test_bad_input_is_refused_or_logged": 25.0,
    "test_mil.py::test_classification_of_deg_labels": 25.0,
    "test_mil.py::test_classification_of_diagnosis_on_held_out_patients": 25.0,
    "test_mil.py::test_folds_never_split_a_patient": 25.0,
    "test_mil.py::test_per_gene_models_are_independent_and_learn": 25.0,
    "test_mil.py::test_predict_writes_tile_outputs_that_average_to_the_bag": 31.4,
    "test_mil.py::test_regression_learns_held_out_patients": 25.0,
    "test_mil_cohort.py::test_a_twelve_slide_cohort_logs_its_steps_not_each_slide": 25.0,
    "test_mil_cohort.py::test_attention_mil_from_stores_and_attention_maps": 25.0,
    "test_mil_cohort.py::test_cross_validation_from_stores_learns_the_rule": 24.4,
    "test_mil_cohort.py::test_dask_workers_give_the_serial_features": 25.0,
    "test_mil_cohort.py::test_killed_run_resumes_without_redoing_finished_slides": 15.5,
    "test_mil_cohort.py::test_manifest_to_stores": 13.1,
    "test_mil_cohort.py::test_synthetic_slides_follow_the_rule_and_read_as_slides": 9.5,
    "test_mil_cohort.py::test_two_processes_cross_validate_from_the_stores_as_one": 25.0,
    "test_mil_interpretation.py::"
    "test_attention_entropy_keeps_the_contribution_map_on_the_expression": 16.1,
    "test_mil_interpretation.py::test_classification_head_beats_chance_on_held_out_bags": 25.0,
    "test_mil_interpretation.py::test_contributions_sum_to_the_bag_prediction": 17.5,
    "test_mil_interpretation.py::"
    "test_per_gene_attention_tracks_its_gene_and_the_check_runs_by_default": 25.0,
    "test_napari.py::test_layers_are_in_micrometres_with_the_sections_data": 29.5,
    "test_napari.py::test_reader_opens_a_written_store": 23.4,
    "test_napari.py::test_screenshot_shows_the_marked_spot_where_it_is": 9.3,
    "test_napari.py::test_widget_switches_the_colour_and_its_range": 14.4,
    "test_options.py::test_string_and_class_forms_train_the_same_weights": 25.0,
    "test_patch_classifier.py::test_beats_an_intensity_baseline_on_a_held_out_section": 25.0,
    "test_patch_classifier.py::"
    "test_calibrated_map_is_closer_to_the_truth_than_the_uncalibrated_one": 25.0,
    "test_patch_classifier.py::test_labels_plot_draws_both_maps_in_class_colours": 25.0,
    "test_patch_classifier.py::test_model_file_round_trip_and_bad_input": 25.0,
    "test_patch_classifier.py::test_patches_of_several_planes_train_a_model_that_reads_each": 25.0,
    "test_patch_classifier.py::"
    "test_per_cell_maps_beat_a_per_cell_baseline_on_a_held_out_section": 25.0,
    "test_pl_habits.py::test_predicted_table_carries_the_visium_layout": 10.9,
    "test_pp_bounds.py::test_detect_tissue_streams_an_image_without_pyramid": 16.1,
    "test_pretrain.py::test_a_run_killed_mid_epoch_resumes_to_the_same_encoder": 25.0,
    "test_pretrain.py::test_pretrained_features_beat_random_init_on_held_out_sections": 25.0,
    "test_pretrain.py::test_two_processes_pretrain_the_same_encoder_as_one": 25.0,
    "test_read_fast.py::test_pyramid_levels_are_spatialdatas": 29.9,
    "test_safety_paths.py::test_cli_predict_overwrite_failing_midway_keeps_the_old_store": 31.4,
    "test_spot_auto.py::test_auto_beats_the_mean_predictor_on_a_held_out_section": 19.0,
    "test_spot_auto.py::test_auto_chooses_by_inner_folds_of_the_training_sections_only": 33.2,
    "test_spot_auto.py::test_cached_features_choose_and_predict_as_computing_them_every_time": 25.0,
    "test_spot_auto.py::test_one_section_is_searched_on_spatial_bands": 13.2,
    "test_spot_auto.py::test_ssl_encoder_is_pretrained_inside_fit_on_the_training_sections": 22.4,
    "test_spot_auto.py::"
    "test_stain_normalised_model_predicts_a_shifted_section_nearly_as_the_original": 15.7,
    "test_spot_cohort.py::test_a_changed_model_is_not_mistaken_for_the_stored_one": 16.7,
    "test_spot_cohort.py::"
    "test_cohort_predictions_are_the_single_slide_ones_and_a_rerun_skips_them": 25.0,
    "test_spot_cohort.py::test_dask_workers_predict_what_one_process_predicts": 25.0,
    "test_spot_cohort.py::test_predictions_survive_a_later_embed_cohort": 6.1,
    "test_spot_cohort.py::test_the_command_line_predicts_a_manifest": 13.1,
    "test_spot_guard.py::test_calibration_is_kept_in_the_model_and_its_file": 15.7,
    "test_spot_regressor.py::test_cross_validate_runs_the_hest_protocol": 10.3,
    "test_spot_regressor.py::test_ridge_recovers_the_designed_expression": 17.7,
    "test_spot_regressor.py::test_trained_routes_beat_the_shuffled_control": 9.2,
    "test_spot_subspot.py::test_subspot_map_beats_the_spot_prediction_copied_down": 23.1,
    "test_tl_bounds.py::test_cross_validate_takes_a_list_of_sections": 16.8,
    "test_tl_safety.py::test_cross_validate_leaves_the_users_sections_unchanged": 14.7,
    "test_tl_safety.py::test_refit_at_another_pixel_size_remakes_its_own_tiles": 19.5,
    "test_tl_user_files.py::test_cross_validate_names_n_genes_and_takes_a_gene_list": 13.5,
    "test_tl_user_files.py::test_evaluate_leaves_out_spots_without_counts": 5.6,
    "test_tl_warnings.py::test_spot_auto_pretraining_tiles_warn_nothing": 9.6,
    "test_tl_warnings.py::test_spot_regressor_fit_and_predict_warn_nothing": 8.4,
    "test_train.py::test_two_processes_train_the_same_model_as_one": 25.0,
}

#: docstring examples (``--doctest-modules`` over src/histoexpr) that run but take seconds: the
#: wall seconds measured
SLOW_DOCTESTS: dict[str, float] = {
    "histoexpr.datasets._cohort.synthetic_cohort": 12.4,
    "histoexpr.io._cohort.Cohort": 8.7,
    "histoexpr.pl._prediction.prediction": 24.8,
    "histoexpr.pp._tile.tile": 14.0,
}

#: docstring examples left out of the doctest run, and why: they read files or models that are
#: not there, or use objects the example does not make (written as a sketch of a longer analysis)
DOCTESTS_KEPT_OUT: dict[str, str] = {
    "histoexpr.datasets._artefacts.synthetic_artefact_slide": "all lines marked +SKIP",
    "histoexpr.datasets._slides.synthetic_slide_cohort": "all lines marked +SKIP",
    "histoexpr.io._cohort.read_cohort": "all lines marked +SKIP",
    "histoexpr.io._platforms.read_cosmx": "reads a CosMx output folder",
    "histoexpr.io._platforms.read_merscope": "reads a MERSCOPE output folder",
    "histoexpr.io._platforms.read_xenium": "reads a Xenium output folder",
    "histoexpr.io._slide_store.SlideStore": "all lines marked +SKIP",
    "histoexpr.io._transcripts.read_cell_boundaries": "reads a polygons file",
    "histoexpr.models._foundation.HuggingFaceEncoder": "reads a model folder with weights",
    "histoexpr.pl._attention.attention": "trains attention MIL on two sections (minutes)",
    "histoexpr.pl._attention.top_tiles": "trains attention MIL on two sections (minutes)",
    "histoexpr.pp._bags.pseudobulk": "uses a section `sdata` it does not make",
    "histoexpr.pp._dataset.TileDataset": "uses a section `sdata` it does not make",
    "histoexpr.pp._gene_pairs.rank_gene_pairs": "uses a section `sdata` it does not make",
    "histoexpr.pp._stain.stain_reference": "uses sections it does not make",
    "histoexpr.pp._transcript_labels.transcript_labels": "uses a section `sdata` it does not make",
    "histoexpr.tl._api.fit": "uses sections it does not make",
    "histoexpr.tl._spot._benchmark.benchmark": "uses sections it does not make",
    "histoexpr.tl._api.predict_options": "uses `hx`, which its module does not import",
    "histoexpr.tl._api.register_model": "registers a user's package it does not make",
    "histoexpr.tl._features._embed_cohort.embed_cohort": "all lines marked +SKIP",
    "histoexpr.tl._metrics._segmentation_metrics.label_metrics": "uses a section it does not make",
    "histoexpr.tl._mil._bag_data.bag_tiles": "all lines marked +SKIP",
    "histoexpr.tl._mil._logistic.fit": "uses sections it does not make",
    "histoexpr.tl._patch._cell_morphology.fit": "uses a section `sdata` it does not make",
    "histoexpr.tl._patch._cell_morphology.predict": "uses a model and section it does not make",
    "histoexpr.tl._patch._patch_classifier.fit": "uses a section `sdata` it does not make",
    "histoexpr.tl._patch._patch_classifier.predict": "uses a model and section it does not make",
    "histoexpr.tl._spot._spot_regressor.fit": "uses the her2st sections it does not read",
}
