import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small tensors: as fast, and far faster on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist_small():
    """First 3000 training and 500 test images of the vendored MNIST."""
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="train")
    xt, yt = load_mnist(split="test")
    return x[:3000].clone(), y[:3000].clone(), xt[:500].clone(), yt[:500].clone()


# The fast tier (`make test-fast`, under a minute on 2 cores) leaves out what trains, launches
# subprocesses or drives a browser; `make test` runs everything.
SLOW_FILES = {"test_faults.py", "test_hostile.py", "test_distributed.py", "test_distributed_trainers.py", "test_web.py",
              "test_benchmarks.py", "test_install.py", "test_startup.py", "test_examples.py", "test_docs.py"}
SLOW_TESTS = {
    "test_the_compiled_geodesic_step_reaches_the_same_fixed_point_bit_for_bit",
    "test_an_evaluation_extended_in_parts_is_the_whole_evaluation",
    "test_cli_eval_and_show_with_the_symmetrised_read_out",
    "test_a_compiled_rule_evaluates_like_the_eager_one",
    "test_a_few_training_steps_reduce_the_loss",
    "test_a_model_trained_in_a_plain_loop_evaluates_like_the_engine",
    "test_a_registered_user_rule_trains_through_the_api_and_the_cli",
    "test_a_rule_that_kills_every_pattern_is_undone_and_the_pool_keeps_no_dead_state",
    "test_a_short_phantom_window_over_the_pool_teaches_the_seed_to_grow",
    "test_acceleration_beats_picard_on_slow_contraction",
    "test_additive_conditioning_adds_the_input_after_the_nonlinearity",
    "test_any_input_size_and_label_maps",
    "test_article_pool_resumes_exactly_and_the_cli_evaluates",
    "test_auto_choice_is_never_slower_than_float32_nchw_here",
    "test_bf16_amp_training_learns_like_float32",
    "test_cli_generate_train_eval_show",
    "test_cli_train_resume_show_measure",
    "test_contractive_rule_is_a_contraction_at_any_size",
    "test_demo_quick_writes_report_with_existing_files",
    "test_deq_rule_stays_bounded_for_many_steps_on_a_large_maze",
    "test_eval_shipped_equilibrium_model_reaches_its_fixed_point",
    "test_eval_shipped_essay_model_json",
    "test_eval_under_bf16_autocast_keeps_the_shipped_accuracy",
    "test_every_option_is_reachable_and_wrong_keys_are_usage_errors",
    "test_export_strips_the_optimizer_and_keeps_a_loadable_grow_checkpoint",
    "test_figures_written",
    "test_implicit_gradient_matches_finite_differences",
    "test_implicit_gradient_matches_unrolled_autograd",
    "test_init_from_starts_a_new_stage_from_another_runs_weights",
    "test_interrupt_then_resume_equals_uninterrupted_run",
    "test_non_finite_steps_are_skipped_and_never_saved",
    "test_parallel_generation_matches_serial",
    "test_report",
    "test_rollout_command",
    "test_round_trip_model_optimizer_and_buffers",
    "test_runs_are_never_overwritten_and_resume_keeps_the_run_as_it_was",
    "test_shipped_dt_model_solves_9x9_mazes",
    "test_shipped_lizards_load_and_both_trainers_grow_the_lizard",
    "test_the_window_recipe_sets_the_equilibrium_trainers_options_and_explicit_ones_win",
    "test_tiny_training_beats_chance_per_cell",
    "test_tiny_training_learns_past_threshold",
    "test_tiny_equilibrium_training_solves_most_5x5_mazes",
    "test_tiny_training_run_solves_most_5x5_mazes",
    "test_torchdeq_masking_fix_keeps_broydens_best_iterate_finite",
    "test_train_amp_flag_reaches_the_run_config",
    "test_which_steps_have_a_fixed_shape",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
