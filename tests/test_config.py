"""One definition per config value: a setting either changes what a stage does or fails before the
stage starts, with one line naming the key (no field that is silently overwritten or ignored)."""
import pytest
from hydra import compose, initialize_config_dir

from maia_adapt.config import CONF_DIR, validate
from maia_adapt.errors import ConfigError
from maia_adapt.stages.common import frozen_model, skill_model


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _fails(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        validate(_cfg(*overrides))
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("override", ["sae.site=blocks.0.hook_mlp_out", "sae.d_in=64", "transcoder.layer=0",
                                      "transcoder.site=blocks.0.hook_mlp_in", "transcoder.target_site=x",
                                      "transcoder.d_in=64", "transcoder.d_out=64"])
def test_a_field_the_stage_sets_itself_fails_when_set(override):
    key = override.split("=")[0]
    assert _fails("stage=sae", override).startswith(f"{key}=")


@pytest.mark.parametrize("override,expected", [
    ("sae.token_pooling=max", "sae.token_pooling='max': expected one of mean, none"),
    ("sae.b_dec_init=avg", "sae.b_dec_init='avg': expected one of mean, median, zeros"),
    ("sae.calibration_concepts=threat", "sae.calibration_concepts='threat': expected one of board, threats, all"),
    ("activations.dtype=bfloat16", "activations.dtype='bfloat16': expected one of float16, float32"),
    ("activations.split=all", "activations.split='all': expected one of train, val, test"),
    ("intervention.kind=sea", "intervention.kind='sea': expected one of sae, probe, steering"),
    ("transitional.oracle=stockfish", "transitional.oracle='stockfish': expected one of auto, engine, accepted, model"),
    ("threats.position_set=puzzle", "threats.position_set='puzzle': expected one of store, puzzles, sts"),
    ("logger.mode=offlien", "logger.mode='offlien': expected one of offline, online, disabled"),
    ("transcoder.kernel=fast", "transcoder.kernel='fast': expected one of auto, sparse, dense"),
    ("transcoder.decoder_norm=rows", "transcoder.decoder_norm='rows': expected one of latent, output, none"),
    ("transcoder.select=best", "transcoder.select='best': expected one of last, spliced_accuracy"),
    ("transcoder.select_split=test", "transcoder.select_split='test': expected one of val, train"),
    ("finetune.buckets=all", "finetune.buckets='all': expected one of random, all_each_epoch"),
    ("finetune.keep=first", "finetune.keep='first': expected one of best, last"),
    ("finetune.train_mode=dropout", "finetune.train_mode='dropout': expected one of frozen_batchnorm, train, eval"),
    ("finetune.row_filter=blunder", "finetune.row_filter='blunder': expected one of all, transitional, blundered_transitional"),
    ("finetune.target=engine", "finetune.target='engine': expected one of dataset, top_bucket"),
    ("finetune.score_rows=some", "finetune.score_rows='some': expected one of all, transitional"),
    # a stage's families are checked under its own key, before any stage runs
    ("probe.families=[x]", "probe.families: unknown family 'x'"),
    ("threats.families=[threat,x]", "threats.families: unknown family 'x'"),
])
def test_a_word_outside_a_settings_choices_fails_before_any_stage(override, expected):
    # stage=train: the check does not wait for the stage that reads the key
    assert _fails("stage=train", override).startswith(expected)


@pytest.mark.parametrize("overrides,expected", [
    (["probe.penalty=l3"], "probe.penalty='l3': expected one of l2, l1"),
    (["probe.c_scale=total", "probe.c_grid=[1]"], "probe.c_scale='total': expected one of sum, mean"),
    (["probe.metric=f1"], "probe.metric='f1': expected one of auc, accuracy, r2"),
    (["probe.select_by=loss", "probe.c_grid=[1]"], "probe.select_by='loss': expected one of metric, auc, accuracy, r2"),
    (["probe.sampling=random"], "probe.sampling='random': expected one of split, balanced, balanced_splits"),
    (["probe.c_grid=[1,0]"], "probe.c_grid=[1.0, 0.0]: expected a list of inverse strengths C > 0"),
    (["probe.sampling=balanced", "probe.split_fractions=[0.5,0.5,0.5]"], "probe.split_fractions=[0.5, 0.5, 0.5]: "
                                                                         "expected three fractions"),
    (["probe.sampling=balanced", "probe.max_per_class=0"], "probe.max_per_class=0: expected a positive integer"),
    (["probe.sampling=balanced", "probe.pool_positions=0"], "probe.pool_positions=0: expected a positive integer"),
    (["probe.sampling=balanced_splits", "probe.val_positions=0"], "probe.val_positions=0: expected a positive integer"),
    (["probe.penalty=l1", "probe.l1=-1"], "probe.l1=-1.0: expected a finite number >= 0"),
    # a seed-choice key that would do nothing fails, naming what it needs
    (["probe.l1=0.1"], "probe.l1=0.1: expected its default unless probe.penalty=l1 and no probe.c_grid"),
    (["probe.penalty=l1", "probe.l2=0.1"], "probe.l2=0.1: expected its default unless probe.penalty=l2"),
    (["probe.c_scale=mean"], "probe.c_scale='mean': expected its default unless a probe.c_grid"),
    (["probe.select_by=r2"], "probe.select_by='r2': expected its default unless a probe.c_grid"),
    (["probe.val_positions=500"], "probe.val_positions=500: expected its default unless probe.sampling=balanced_splits"),
    (["probe.pool_positions=5000"], "probe.pool_positions=5000: expected its default unless probe.sampling=balanced"),
    (["probe.max_per_class=100"], "probe.max_per_class=100: expected its default unless probe.sampling balanced"),
    (["probe.split_fractions=[0.8,0.1,0.1]"], "probe.split_fractions=[0.8, 0.1, 0.1]: expected its default unless "
                                              "probe.sampling=balanced"),
    (["probe.sampling=balanced", "probe.train_positions=100"], "probe.train_positions=100: expected its default "
                                                               "unless probe.sampling split or balanced_splits"),
])
def test_a_bad_probe_seed_switch_fails_in_one_line_naming_it(overrides, expected):
    assert _fails("stage=probe", *overrides).startswith(expected)


def test_the_probe_seed_switches_pass_together():
    validate(_cfg("stage=probe", "probe.penalty=l1", "probe.c_grid=[0.01,0.1,1,10,100]", "probe.c_scale=mean",
                  "probe.metric=accuracy", "probe.penalize_bias=true", "probe.standardize=false",
                  "probe.class_balance=false", "probe.sampling=balanced", "probe.max_per_class=1000",
                  "probe.pool_positions=20000", "probe.split_fractions=[0.7,0.1,0.2]"))
    validate(_cfg("stage=probe", "probe.penalty=l1", "probe.c_grid=[100,10,1,0.2,0.1]", "probe.metric=r2",
                  "probe.sampling=balanced_splits", "probe.max_per_class=null", "probe.val_positions=2000",
                  "probe.train_positions=8000"))


def test_every_default_and_every_preset_passes_the_checks():
    groups = [f"{g.name}={p.stem}" for g in CONF_DIR.iterdir() if g.is_dir() and g.name not in ("hydra", "stage")
              for p in g.glob("*.yaml")]
    for o in ["stage=sae", "stage=probe", "stage=transcoder", *groups]:
        validate(_cfg(o))


@pytest.mark.parametrize("site,hook", [("resid_post", "hook_resid_post"), ("mlp", "hook_mlp_out"),
                                       ("attention", "hook_attn_heads")])
def test_the_site_preset_reaches_every_stage_that_reads_sites(site, hook):
    cfg = _cfg(f"site={site}", "layer=0")
    for section in ("sae", "activations", "probe"):
        assert list(cfg[section].sites) == [f"blocks.0.{hook}"], section
    # a stage's own list still wins
    assert list(_cfg(f"site={site}", "probe.sites=[blocks.1.hook_resid_post]").probe.sites) == ["blocks.1.hook_resid_post"]


def test_no_two_site_presets_are_the_same():
    presets = sorted((CONF_DIR / "site").glob("*.yaml"))
    sites = [tuple(_cfg(f"site={p.stem}").sites) for p in presets]
    assert len(set(sites)) == len(sites), dict(zip((p.stem for p in presets), sites))


def test_a_shape_override_that_disagrees_with_the_checkpoint_names_the_key_and_both_values():
    with pytest.raises(ConfigError, match=r"^model.dim_vit=512: the checkpoint .*maia2_small.safetensors has dim_vit=256"):
        frozen_model(_cfg("stage=sae", "model.dim_vit=512"), "sae")
    with pytest.raises(ConfigError, match=r"^model.heads=4: .* has heads=8"):
        skill_model(_cfg("stage=probe", "model.heads=4"), "probe")
    # the preset's shape is that of a model to build: another file loads with it, and so does a value that agrees
    assert frozen_model(_cfg("stage=sae", "model=maia2", "model.checkpoint=${paths.assets}/maia2_small.safetensors"),
                        "sae").cfg.dim_vit == 256
    assert frozen_model(_cfg("stage=sae", "model=maia2", "model.checkpoint=${paths.assets}/maia2_small.safetensors",
                             "model.dim_vit=256"), "sae").cfg.dim_vit == 256


def test_growing_the_transformer_needs_a_trained_model_to_grow():
    assert _fails("stage=train", "train.grow_vit_blocks=2").startswith(
        "train.grow_vit_blocks=2: expected 0 unless train.init_from_checkpoint=true")
    assert _fails("stage=train", "train.grow_vit_blocks=-1").startswith("train.grow_vit_blocks=-1")
    validate(_cfg("experiment=skill_model", "train.grow_vit_blocks=2"))


@pytest.mark.parametrize("override", ["train.teacher_contrast=0.1", "train.teacher_smooth=true", "train.teacher_amplify=3"])
def test_a_target_setting_without_a_teacher_fails(override):
    assert _fails("stage=train", override).startswith(override.split("=")[0] + "=")
    validate(_cfg("experiment=skill_model", override))


def test_the_contrast_needs_two_conditionings():
    assert _fails("experiment=skill_model", "train.teacher_contrast=0.1", "train.teacher_buckets=1").startswith(
        "train.teacher_contrast=0.1: expected 0 unless train.teacher_buckets >= 2")


def test_study_presets_keep_one_network_of_the_family_apart_from_the_family():
    """`model=maia1 model.rating=1100` writes and reads its own run directories (maia1-1100), while the
    intervention still takes the family's transitional positions; one network never overwrites another."""
    one = _cfg("experiment=intervention_study", "model=maia1", "model.rating=1100")
    assert one.intervention.saes.endswith("sae_study/maia1-1100")
    assert one.intervention.threats.endswith("threats_study/maia1-1100")
    assert one.intervention.transitional.endswith("transitional_study/maia1")
    assert _cfg("experiment=threats_study", "model=maia1", "model.rating=1900").threats.saes.endswith("sae_study/maia1-1900")
    assert _cfg("experiment=intervention_study", "model=maia2_small").intervention.saes.endswith("sae_study/maia2_small")
    assert _cfg("experiment=intervention_study", "model=maia1").intervention.saes.endswith("sae_study/maia1")


@pytest.mark.parametrize("name", ["transitional_study", "probe_study", "finetune_study", "sae_study", "threats_study",
                                  "intervention_study", "transcoder_study", "circuits_study", "sae_sweep"])
def test_study_presets_default_to_the_skill_model_and_a_model_override_wins(name):
    """The study runs on the distilled maia2_skill (whose moves depend on skill) unless the command line
    names another model: the preset's `override /model` must not shadow `model=...`."""
    assert _cfg(f"experiment={name}").model.name == "maia2_skill"
    assert _cfg(f"experiment={name}", "model=maia2_small").model.name == "maia2_small"
    assert _cfg(f"experiment={name}", "model=maia1").model.name == "maia1"


def test_the_seed_transitional_rules_need_their_inputs():
    assert _fails("stage=transitional", "transitional.accept=multipv").startswith("transitional.multipv=1: expected 2 or more")
    assert _fails("stage=transitional", "transitional.require=some").startswith(
        "transitional.require='some': expected one of none, monotone, monotone_blunder")
    assert _fails("stage=transitional", "transitional.blunder_rule=x").startswith("transitional.blunder_rule='x'")
    validate(_cfg("stage=transitional", "transitional.accept=multipv", "transitional.multipv=5"))


@pytest.mark.parametrize("override,expected", [
    ("intervention.keep_error=false", "intervention.keep_error=False: expected nothing: it is now intervention.error"),
    ("intervention.per_bucket=false", "intervention.per_bucket=False: expected nothing: it is now intervention.select"),
    ("intervention.error=lose", "intervention.error='lose': expected one of keep, drop, replace"),
    ("intervention.select=square", "intervention.select='square': expected one of global, bucket, cell"),
    ("intervention.positions=all", "intervention.positions='all': expected one of concept, resolves_square"),
    ("intervention.correct=engine", "intervention.correct='engine': expected one of dataset, top_bucket"),
    ("intervention.control=off", "intervention.control='off': expected one of matched, random, none"),
])
def test_the_intervention_switches_and_their_old_spellings_fail_in_one_line(override, expected):
    assert _fails("stage=intervention", override).startswith(expected)


@pytest.mark.parametrize("override,expected", [
    ("finetune.weight_decay=-1e-5", "finetune.weight_decay=-1e-05: expected a finite number >= 0"),
    ("finetune.side_info_weight=-1", "finetune.side_info_weight=-1.0: expected a finite number >= 0"),
    ("finetune.epochs=0", "finetune.epochs=0: expected a positive integer"),
    ("finetune.patience=0", "finetune.patience=0: expected a positive integer"),
    ("finetune.eval_every=0", "finetune.eval_every=0: expected a positive integer"),
    ("finetune.min_train_rows=-1", "finetune.min_train_rows=-1: expected 0 or more"),
    ("transcoder.elo=real", "transcoder.elo='real': expected an Elo bucket 0..10 or 'data' or 'random'"),
    ("transcoder.select_every=0", "transcoder.select_every=0: expected a positive integer"),
    ("transcoder.select_positions=0", "transcoder.select_positions=0: expected a positive integer"),
])
def test_a_seed_switch_out_of_range_fails_naming_it(override, expected):
    assert _fails("stage=finetune", override) == expected
