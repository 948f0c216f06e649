"""Which tests are slow: more than 3 s each (setup, call and teardown, any parameter) in CI's
run of 2026-12-03 on 2 cores, 2,120 of the suite's 2,330 s. They train models, start worker
processes or wait for heartbeats. ``pytest -m "not slow"`` runs the rest in a few minutes, for
development; CI runs everything. A new test that takes longer belongs here (``pytest
--durations=0`` lists every test's time).
"""

# Whole files.
SLOW_FILES = (
    "tests/test_dashboard.py",
    "tests/test_examples.py",
    "tests/test_notebook.py",
    "tests/test_outputs.py",
    "tests/test_partition.py",
    "tests/test_pgbouncer.py",
    "tests/test_recovery.py",
    "tests/test_secrets.py",
    "tests/test_slurm.py",
)

# Tests of the other files, by function (every parameter).
SLOW_TESTS = {
    "tests/test_any_task.py": (
        "test_a_classifier_giving_logits_to_hpos_cross_entropy_is_refused",
        "test_a_compiled_model_keeps_its_loss_and_metrics",
        "test_a_regression_tuned_on_val_mae_through_the_cli_ranks_ascending",
    ),
    "tests/test_api.py": (
        "test_a_builder_of_main_tunes_arrays_in_memory_with_two_workers",
        "test_a_regression_with_its_own_loss_is_tuned_on_val_mae_and_ranked_ascending",
        "test_a_study_run_through_the_cli_and_through_tune_gives_identical_trials",
        "test_an_interrupt_during_tune_raises_keyboard_interrupt_in_the_caller",
        "test_bad_input_raises_an_hpo_error_naming_it_and_writes_nothing",
        "test_create_records_the_data_and_the_builder_as_hpo_create_does",
        "test_launch_and_results_run_a_study_file_from_python",
    ),
    "tests/test_artifacts.py": (
        "test_a_full_artifact_disk_keeps_the_trial_and_registers_no_file",
        "test_a_full_disk_under_the_checkpoints_lets_the_trial_train_on_and_leaves_no_partial_file",
        "test_the_models_kept_are_the_best_so_far_or_none",
    ),
    "tests/test_bad_input.py": (
        "test_a_grid_over_the_trial_limit_is_refused_at_once_and_the_limit_can_be_raised",
        "test_a_study_file_with_no_end_is_refused_at_its_size_limit",
        "test_a_study_name_past_100_characters_is_refused_by_every_command",
        "test_export_into_a_missing_folder_is_one_line",
        "test_sqlite_on_a_read_only_file_system",
    ),
    "tests/test_checkpoints.py": (
        "test_a_checkpoint_of_a_same_named_study_in_another_database_is_not_gone_on_from",
        "test_a_killed_or_stopped_worker_s_trial_is_resumed_exactly",
        "test_a_retry_on_another_host_goes_on_from_the_shared_store",
        "test_a_run_stopped_and_restored_ends_as_an_uninterrupted_one",
        "test_a_shared_prefix_run_resumes_mid_run_and_completes_the_points_it_had_not_reached",
    ),
    "tests/test_cli.py": (
        "test_bad_input_is_one_line_and_exit_code_2",
        "test_create_launch_export_runs_the_whole_grid",
        "test_read_only_commands_load_no_dashboard_and_no_keras",
        "test_status_lists_every_study",
        "test_storage_and_debug_work_before_and_after_the_subcommand",
    ),
    "tests/test_confirm.py": (
        "test_a_confirmation_retrains_the_best_configurations_with_seeds_the_search_never_used",
        "test_confirming_again_trains_nothing_twice",
    ),
    "tests/test_connections.py": (
        "test_a_launch_of_four_workers_holds_at_most_one_connection_per_worker",
        "test_a_worker_holds_no_connection_while_it_trains",
        "test_more_workers_than_the_server_admits_take_turns_and_each_trial_runs_once",
    ),
    "tests/test_damaged_storage.py": (
        "test_a_damaged_database_is_one_line_for_every_command",
        "test_a_disk_too_small_for_a_new_database_is_one_line",
        "test_a_full_disk_under_the_database_is_one_line_and_loses_nothing",
    ),
    "tests/test_data.py": (
        "test_real_archive_has_cifar10s_shape_and_balance",
    ),
    "tests/test_exactly_once.py": (
        "test_concurrent_create_commands_queue_every_point_once",
        "test_concurrent_creates_queue_every_grid_point_once",
        "test_launch_of_parallel_tpe_trains_eight_different_configurations",
        "test_parallel_random_workers_never_repeat_a_configuration",
        "test_parallel_tpe_workers_never_repeat_a_configuration",
        "test_seeds_are_recorded_distinct_and_the_same_on_a_rerun",
        "test_three_launchers_of_one_study_train_every_point_once",
    ),
    "tests/test_hostile.py": (
        "test_a_builder_that_exits_for_some_parameters_fails_those_trials_and_the_worker_says_so",
        "test_a_builder_that_exits_is_refused_at_create_in_one_line",
        "test_a_builder_that_iterates_its_params_is_accepted",
        "test_a_categorical_value_with_a_line_break_stays_in_its_row_in_every_export",
        "test_a_create_killed_while_queueing_is_finished_only_with_its_own_definition",
        "test_a_launch_of_more_workers_than_a_builders_model_leaves_room_for_is_refused",
        "test_a_launch_whose_worker_ends_early_is_not_a_success",
        "test_a_model_that_exits_while_it_trains_fails_its_trial_and_the_worker_goes_on",
        "test_a_piped_study_file_finds_its_data_and_builder_in_the_working_directory",
        "test_a_worker_whose_build_hangs_stops_within_seconds_of_a_signal",
        "test_ctrl_c_during_a_dry_build_still_stops_create",
        "test_ten_thousand_values_of_a_builders_parameter_are_not_ten_thousand_dry_builds",
        "test_on_postgresql_a_create_killed_under_the_queue_lock_leaves_nothing",
    ),
    "tests/test_liveness.py": (
        "test_a_bystander_with_a_short_grace_period_never_fails_a_healthy_trial",
        "test_a_worker_frozen_past_the_grace_period_comes_back_calmly",
        "test_workers_whose_clocks_differ_never_fail_each_other",
    ),
    "tests/test_lock.py": (
        "test_one_holder_at_a_time",
    ),
    "tests/test_loop.py": (
        "test_a_shorter_point_taken_over_by_another_worker_is_dropped_and_the_run_goes_on",
    ),
    "tests/test_models.py": (
        "test_augmented_model_trains_under_xla_and_round_trips",
    ),
    "tests/test_objective.py": (
        "test_a_blown_up_run_is_complete_and_flagged_diverged",
        "test_a_pruned_trial_keeps_its_epochs_and_records_no_result",
        "test_fixed_parameters_are_recorded_but_not_searched",
        "test_search_trials_record_the_report_columns_and_stream_epochs",
        "test_seeds_differ_between_trials_and_a_study_run_again_repeats_them",
    ),
    "tests/test_own_model.py": (
        "test_a_build_that_fails_only_for_some_parameters_fails_those_trials_once",
        "test_a_builder_of_your_own_trains_on_data_of_your_own",
        "test_a_builder_whose_model_cannot_serve_the_data_is_refused_when_the_study_is_created",
        "test_a_confirmation_trains_the_builders_best_again",
    ),
    "tests/test_pool.py": (
        "test_a_launch_shows_its_runs_and_a_time_left_within_twice_the_real_one",
        "test_no_worker_outlives_its_launcher",
        "test_one_launch_runs_several_studies_through_one_pool",
    ),
    "tests/test_prefixes.py": (
        "test_a_crash_part_way_keeps_the_points_passed_and_retries_the_rest",
        "test_a_milestone_holds_the_weights_of_an_independent_run",
        "test_a_shared_run_completes_each_point_as_an_independent_run_would",
        "test_concurrent_creates_queue_every_point_and_repeat_once",
        "test_status_shows_each_point_and_repeat",
    ),
    "tests/test_report.py": (
        "test_report_measures_table1_from_the_trials",
    ),
    "tests/test_results.py": (
        "test_export_by_configuration_ranks_means_over_repeats",
        "test_the_terminal_table_is_narrow_by_default_and_whole_with_all",
    ),
    "tests/test_storage.py": (
        "test_plain_postgres_urls_get_a_driver",
    ),
    "tests/test_study_data.py": (
        "test_a_named_data_set_that_cannot_download_is_one_line",
        "test_a_worker_with_another_subset_refuses_the_study",
        "test_a_worker_with_other_data_refuses_the_study",
        "test_another_version_of_a_module_the_builder_imports_is_refused",
        "test_another_version_of_the_builder_is_refused",
        "test_data_changed_under_a_study_is_refused",
    ),
}


def is_slow(nodeid: str) -> bool:
    """Whether the test ``nodeid`` ("tests/test_x.py::test_y[param]") is one of the above."""
    file, _, test = nodeid.partition("::")
    return file in SLOW_FILES or test.partition("[")[0] in SLOW_TESTS.get(file, ())
