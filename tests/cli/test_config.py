"""Tests of the config loader (ast_jax.cli.config), the builder (ast_jax.configs.common) and the study configs in ast_jax/configs/ (docs/method.md §4-5, §9)."""

import json
import os
import textwrap

import ml_collections
import pytest

from ast_jax.cli import config as loader
from ast_jax.studies import settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "ast_jax", "configs")
# The studies' configs; the ablations_*.py files are sweeps whose variants name ablations (tests/test_sweep.py).
CONFIG_FILES = sorted(f for f in os.listdir(CONFIGS)
                      if f.endswith(".py") and not f.startswith(("_", "ablations_")) and f != "common.py")


def path(name, variant=None):
    spec = os.path.join(CONFIGS, name + ".py")
    return f"{spec}:{variant}" if variant else spec


def load(name, variant=None, overrides=()):
    return loader.load_config(path(name, variant), overrides)


# ------------------------------------------------------------------ every file, both variants

@pytest.mark.parametrize("variant", [None, "thesis", "reference"])
@pytest.mark.parametrize("filename", CONFIG_FILES)
def test_every_config_loads_locked_with_its_variant(filename, variant):
    c = load(filename[:-3], variant)
    assert c.name == filename[:-3]
    reference = variant == "reference"
    assert (c.pgd.space, c.ast.pairing, c.ast.target_statistics) == (
        ("reference", "random", "after_train_forward") if reference else ("pixel", "aligned", "before_step"))
    assert c.stingy.temperature == (20.0 if reference else c.kd.temperature)
    assert c.stingy.omega == 0.9
    # Every batch divides 8 devices (and every power of two up to it): the defaults run on an 8-GPU node.
    assert c.train.batch_size % 8 == c.train.eval_batch_size % 8 == c.pgd.batch_size % 8 == 0
    with pytest.raises(AttributeError):
        c.no_such_key = 1


def test_default_variant_is_thesis():
    def record(variant):
        return settings.to_json(loader.to_settings(load("cifar100_resnet18", variant)))

    assert record(None) == record("thesis") != record("reference")


# ------------------------------------------------------------------ docs/method.md §5 values

def test_cifar10_resnet18_values():
    t, r = load("cifar10_resnet18", "thesis"), load("cifar10_resnet18", "reference")
    assert (t.data.name, t.teacher.model) == ("cifar10", "resnet18")
    assert t.students == ("cnn", "preresnet20", "preresnet32", "resnet18")
    assert (t.train.epochs, t.train.milestones, t.train.lr_decay) == (160, (80, 120), 0.1)
    assert (t.train.optimizer, t.train.lr, t.train.momentum, t.train.weight_decay, t.train.batch_size) == (
        "sgd", 0.1, 0.9, 5e-4, 128)
    assert (t.ast.temperature, t.ast.omega, t.ast.ratio, t.ast.k) == (6.0, 0.05, 0.2, None)
    assert (r.ast.temperature, r.ast.omega, r.ast.k, r.ast.ratio) == (6.0, 0.05, 2, None)
    assert (t.nasty.temperature, t.nasty.omega) == (4.0, 0.04)
    assert (t.stt.temperature, t.stt.omega, t.stt.ratio) == (4.0, 0.04, 0.2)
    assert (t.stingy.ratio, t.stingy.temperature, t.stingy.omega) == (0.2, 4.0, 0.9)
    assert (r.stingy.ratio, r.stingy.temperature, r.stingy.omega) == (0.2, 20.0, 0.9)
    assert (t.kd.temperature, t.kd.omega) == (4.0, 0.9)
    assert (t.pgd.eps, t.pgd.step_size, t.pgd.steps, t.pgd.space, t.pgd.random_start) == (
        0.3, 0.01, 40, "pixel", False)
    assert (t.data.augment.crop_padding, t.data.augment.flip, t.data.augment.rotation_degrees) == (4, True, 0.0)
    assert (t.ast.divergence, t.ast.pairing, t.stt.divergence) == ("epd", "aligned", "epd")


def test_cifar100_resnet18_values():
    t, r = load("cifar100_resnet18", "thesis"), load("cifar100_resnet18", "reference")
    assert (t.ast.temperature, t.ast.omega, t.ast.ratio, t.ast.k) == (20.0, 0.03, 0.02, None)
    assert (r.ast.temperature, r.ast.omega, r.ast.k, r.ast.ratio) == (30.0, 0.035, 7, None)
    assert (r.pgd.space, r.ast.pairing) == ("reference", "random")
    assert t.students == ("shufflenetv2", "resnet18")
    assert (t.train.epochs, t.train.milestones, t.train.lr_decay) == (200, (60, 120, 160), 0.2)
    assert (t.nasty.temperature, t.nasty.omega, r.nasty.temperature, r.nasty.omega) == (20.0, 0.005, 20.0, 0.005)
    assert (t.stt.ratio, t.stt.temperature, t.stt.omega) == (0.1, 20.0, 0.005)
    assert (r.stt.ratio, r.stt.temperature, r.stt.omega) == (0.1, 20.0, 0.005)  # "—": thesis kept
    assert (t.kd.temperature, t.kd.omega, t.stingy.ratio) == (20.0, 0.9, 0.1)
    assert settings.sparsity_k(t.ast, 100) == 2 and settings.sparsity_k(r.ast, 100) == 7


def test_cifar100_resnet50_values():
    t, r = load("cifar100_resnet50", "thesis"), load("cifar100_resnet50", "reference")
    assert t.teacher.model == "resnet50" and t.students == ("shufflenetv2", "resnet18")
    assert (t.ast.temperature, t.ast.omega, t.ast.ratio) == (20.0, 0.03, 0.03)
    assert (r.ast.temperature, r.ast.omega, r.ast.k, r.ast.ratio) == (30.0, 0.03, 7, None)
    assert settings.sparsity_k(t.ast, 100) == 3


def test_tiny_imagenet_values():
    t, r = load("tiny_imagenet_resnet50", "thesis"), load("tiny_imagenet_resnet50", "reference")
    assert (t.teacher.model, t.students) == ("resnet50", ("resnet18",))
    assert (t.ast.temperature, t.ast.omega, t.ast.ratio) == (30.0, 0.0175, 0.015)
    assert settings.sparsity_k(t.ast, 200) == 3
    # "—" in the authors' column: the reference variant keeps the thesis AST values.
    assert (r.ast.temperature, r.ast.omega, r.ast.ratio, r.ast.k) == (30.0, 0.0175, 0.015, None)
    assert (r.pgd.space, r.ast.pairing, r.stingy.temperature) == ("reference", "random", 20.0)
    assert (t.nasty.temperature, t.nasty.omega) == (20.0, 0.01)
    assert (t.stt.ratio, t.stt.temperature, t.stt.omega) == (0.1, 20.0, 0.01)
    assert (t.data.augment.crop_padding, t.data.augment.flip, t.data.augment.rotation_degrees) == (0, True, 20.0)
    assert (t.train.epochs, t.train.milestones, t.train.lr_decay) == (200, (60, 120, 160), 0.2)


def test_small_studies_follow_spec_section_9():
    d = load("digits")
    assert (d.data.name, d.teacher.model, d.students) == ("digits", "preresnet20", ("cnn",))
    # §9's tau 10 and k 2; omega 0.04 (omega x tau 0.4) and the attack at AST's tau: docs/notes/digits-demo-search.md
    assert (d.ast.temperature, d.ast.omega, d.ast.k) == (10.0, 0.04, 2)
    assert (d.kd.temperature, d.kd.omega, d.stingy.temperature) == (10.0, 0.9, 10.0)
    assert (d.pgd.eps, d.pgd.space, d.train.batch_size, d.train.optimizer, d.train.lr) == (
        0.3, "pixel", 64, "sgd", 0.05)
    assert d.train.milestones and d.train.milestones[-1] <= d.train.epochs
    aug = d.data.augment
    assert (aug.crop_padding, aug.flip, aug.rotation_degrees) == (0, False, 0.0)
    f = load("fashion_mnist")
    assert (f.data.name, f.teacher.model, f.students) == ("fashion_mnist", "preresnet20", ("cnn", "preresnet20"))
    assert (f.data.augment.crop_padding, f.data.augment.flip) == (0, False)
    for c in (d, f):
        assert loader.to_settings(c).train_for("cnn").optimizer == "adam"
        assert loader.to_settings(c).train_for("cnn").milestones == ()


def test_train_for():
    c = loader.to_settings(load("cifar10_resnet18"))
    cnn = c.train_for("cnn")
    assert (cnn.optimizer, cnn.lr, cnn.epochs, cnn.milestones, cnn.weight_decay) == ("adam", 1e-3, 100, (), 0.0)
    assert cnn.batch_size == c.train.batch_size
    assert c.train_for("resnet18") == c.train
    assert c.train.optimizer == "sgd"  # a copy: the study's train is untouched
    ini = c.teacher_train_for("ini")
    assert (ini.momentum, ini.epochs, ini.milestones) == (0.5, 150, (50, 100))
    assert c.teacher_train_for("ast") == c.train


def _plain(node):
    """A config as plain JSON values, walked here independently of the settings' `to_record`."""
    if isinstance(node, ml_collections.ConfigDict):
        return {key: _plain(node[key]) for key in node.keys()}
    if isinstance(node, (list, tuple)):
        return [_plain(item) for item in node]
    return node


@pytest.mark.parametrize("variant", [None, "reference"])
@pytest.mark.parametrize("filename", CONFIG_FILES)
def test_settings_record_the_config_as_it_was(filename, variant):
    """The typed settings carry every value of the validated config: the study's record (study.json,
    every run.json) is the config's own JSON, so work directories written from the config stay valid."""
    config = load(filename[:-3], variant)
    expected = {key: value for key, value in _plain(config).items() if key not in settings.COMMAND_SECTIONS}
    typed = loader.to_settings(config)
    assert json.loads(json.dumps(settings.study_record(typed))) == expected
    assert typed.attacks == config.attacks.to_dict() and typed.matrix.victims == config.matrix.victims


# ------------------------------------------------------------------ overrides

def test_overrides_apply_with_types():
    c = load("cifar10_resnet18", "thesis", [
        "--config.train.epochs", "3",             # int, space-separated
        "--config.train.lr=1",                    # int -> float
        "--config.ast.omega=0.1",                 # float
        "--config.pgd.random_start=True",         # bool
        "--config.data.augment.flip=false",       # bool, lower case
        "--config.train.milestones=(1,2)",        # tuple
        "--config.student_train.cnn.milestones=1,2",
        "--config.students=cnn", "--config.students", "resnet18",  # tuple of str by repetition
        "--config.dtype=bfloat16",                # bare string
        "--config.data.data_dir=/tmp/some data",  # string with a space
        "--config.ast.k=3",                       # switches the sparsity form: clears ratio
        "--config.student_train.cnn.epochs=4",
        "--config.ast.target_statistics", "after_train_forward",
    ])
    assert c.train.epochs == 3 and type(c.train.epochs) is int
    assert c.train.lr == 1.0 and type(c.train.lr) is float
    assert c.ast.omega == 0.1
    assert c.pgd.random_start is True and c.data.augment.flip is False
    assert c.train.milestones == (1, 2)
    assert loader.to_settings(c).train_for("cnn").milestones == (1, 2)
    assert c.students == ("cnn", "resnet18")
    assert c.dtype == "bfloat16" and c.data.data_dir == "/tmp/some data"
    assert (c.ast.k, c.ast.ratio) == (3, None)
    assert loader.to_settings(c).train_for("cnn").epochs == 4
    assert c.ast.target_statistics == "after_train_forward"
    assert c.is_locked


def test_space_separated_and_equals_forms_agree():
    spaced = load("digits", None, ["--config.train.epochs", "3", "--config.train.milestones", "()",
                                   "--config.pgd.eps", "0.1", "--config.seed", "7"])
    joined = load("digits", None, ["--config.train.epochs=3", "--config.train.milestones=()",
                                   "--config.pgd.eps=0.1", "--config.seed=7"])
    assert (spaced.train.epochs, spaced.train.milestones, spaced.pgd.eps, spaced.seed) == (3, (), 0.1, 7)
    assert settings.to_json(loader.to_settings(spaced)) == settings.to_json(loader.to_settings(joined))
    assert load("digits", None, ["--noconfig.data.augment.flip", "--config.pgd.random_start"]).pgd.random_start


def test_later_override_wins():
    assert load("digits", None, ["--config.seed=1", "--config.seed=2"]).seed == 2


@pytest.mark.parametrize("text, expected", [
    ("80", (80,)), ("80,", (80,)), ("80,120", (80, 120)), ("[10, 20]", (10, 20)), ("()", ())])
def test_milestone_override_forms(text, expected):
    c = load("cifar10_resnet18", "thesis", [f"--config.train.milestones={text}"])
    assert c.train.milestones == expected


@pytest.mark.parametrize("text", ["resnet18", "'resnet18'", "('cnn', 'resnet18')", "['cnn', 'resnet18']"])
def test_student_override_forms(text):
    c = load("cifar10_resnet18", "thesis", [f"--config.students={text}"])
    assert c.students[-1] == "resnet18" and all(isinstance(s, str) for s in c.students)


def test_comma_separated_students_name_the_tuple_form():
    message = _raises_naming("config.students[0]", ["--config.students=cnn,resnet18"])
    assert "--config.students=\"('cnn', 'resnet18')\"" in message


def test_one_sparsity_override_clears_the_other():
    c = load("cifar100_resnet18", "thesis", ["--config.stt.k=5"])
    assert (c.stt.k, c.stt.ratio) == (5, None)
    assert settings.sparsity_k(c.stt, 100) == 5
    r = load("cifar100_resnet18", "reference", ["--config.ast.ratio=0.05"])  # the reference gives k = 7
    assert (r.ast.k, r.ast.ratio) == (None, 0.05)
    assert settings.sparsity_k(r.ast, 100) == 5
    _raises_naming("config.ast.k", ["--config.ast.k=3", "--config.ast.ratio=0.2"])  # both: refused


def _raises_naming(key, overrides, name="cifar10_resnet18", variant="thesis"):
    with pytest.raises(ValueError) as info:
        load(name, variant, overrides)
    assert key in str(info.value), str(info.value)
    return str(info.value)


def test_unknown_key_lists_valid_keys():
    message = _raises_naming("config.ast.tau", ["--config.ast.tau=3"])
    assert "temperature" in message and "omega" in message
    message = _raises_naming("config.nosection", ["--config.nosection.x=3"])
    assert "train" in message
    _raises_naming("config.student_train.resnet50", ["--config.student_train.resnet50.lr=0.1"])


@pytest.mark.parametrize("override, message", [
    ("--config.train.epochs=3.5", "config.train.epochs: cannot parse '3.5' as int"),
    ("--config.train.epochs=many", "config.train.epochs: cannot parse 'many' as int"),
    ("--config.ast.omega=high", "config.ast.omega: cannot parse 'high' as float"),
    ("--config.ast.k=None", "config.ast.k: cannot parse 'None' as int"),
    ("--config.pgd.random_start=maybe", "config.pgd.random_start: cannot parse 'maybe' as bool"),
    ("--config.train.lr=None", "config.train.lr: cannot parse 'None' as float"),
    ("--config.train.milestones=(a,b)", "config.train.milestones must be a tuple of ints"),
    ("--config.ast=3", "config.ast is a section, not a value; override its keys: config.ast.divergence, config.ast.k, config.ast.omega"),
])
def test_bad_value_type_names_the_key(override, message):
    _raises_naming(message, [override])


@pytest.mark.parametrize("arguments, message", [
    (["--train.epochs=3"], "train.epochs"),
    (["config.train.epochs=3"], "unexpected argument 'config.train.epochs=3'"),
    (["--config.train.epochs"], "config.train.epochs"),
])
def test_malformed_override(arguments, message):
    text = _raises_naming(message, arguments)
    assert "--config.KEY=VALUE" in text or "value" in text


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("overrides, key", [
    (["--config.ast.divergence=js"], "config.ast.divergence"),
    (["--config.ast.pairing=zip"], "config.ast.pairing"),
    (["--config.ast.target_statistics=after_step"], "config.ast.target_statistics must be one of before_step"),
    (["--config.pgd.space=normalized"], "config.pgd.space"),
    (["--config.train.optimizer=rmsprop"], "config.train.optimizer"),
    (["--config.dtype=float16"], "config.dtype"),
    (["--config.data.name=mnist"], "config.data.name"),
    (["--config.teacher.model=vgg16"], "config.teacher.model"),
    (["--config.ast.omega=1.5"], "config.ast.omega must lie in [0, 1], got 1.5"),
    (["--config.nasty.omega=-0.1"], "config.nasty.omega"),
    (["--config.kd.temperature=0"], "config.kd.temperature"),
    (["--config.ast.k=0"], "config.ast.k"),
    (["--config.ast.k=11"], "config.ast.k must lie in [1, 10]"),
    (["--config.stt.k=2", "--config.stt.ratio=0.2"], "exactly one of config.stt.k and config.stt.ratio"),
    (["--config.ast.ratio=1.5"], "config.ast.ratio"),
    (["--config.ast.ratio=0"], "config.ast.ratio"),
    (["--config.train.epochs=100"], "config.train.milestones"),  # milestones (80, 120) beyond epochs
    (["--config.train.milestones=(120,80)"], "config.train.milestones"),
    (["--config.student_train.cnn.epochs=10", "--config.student_train.cnn.milestones=(20,)"],
     "config.student_train.cnn.milestones"),
    (["--config.students=cnn,vgg16"], "config.students"),
    (["--config.students=()"], "config.students"),
    (["--config.train.epochs=0"], "config.train.epochs"),
    (["--config.train.batch_size=-1"], "config.train.batch_size"),
    (["--config.train.checkpoint_every=0"], "config.train.checkpoint_every"),
    (["--config.pgd.steps=0"], "config.pgd.steps"),
    (["--config.pgd.eps=-0.1"], "config.pgd.eps"),
    (["--config.pgd.step_size=0"], "config.pgd.step_size"),
    (["--config.train.lr=0"], "config.train.lr"),
    (["--config.student_train.cnn.lr=-1"], "config.student_train.cnn.lr"),
])
def test_invalid_values_name_the_key(overrides, key):
    _raises_naming(key, overrides)


def test_all_problems_reported_together():
    message = _raises_naming("config.ast.omega", ["--config.ast.omega=1.5", "--config.kd.temperature=-1"])
    assert "config.kd.temperature" in message


def test_validate_checks_student_train_and_schema():
    from ast_jax.configs.common import study_config

    c = study_config(name="x", dataset="cifar10", teacher="resnet18", students=("cnn",),
                     ast=dict(temperature=6, omega=0.05, ratio=0.2), student_train={"vgg": dict(lr=0.1)})
    with pytest.raises(ValueError, match="config.student_train.vgg"):
        loader.validate(c)
    c = study_config(name="x", dataset="cifar10", teacher="resnet18", students=("cnn",),
                     ast=dict(temperature=6, omega=0.05, ratio=0.2), student_train={"cnn": dict(learning_rate=0.1)})
    with pytest.raises(ValueError, match="config.student_train.cnn.learning_rate"):
        loader.validate(c)
    c = study_config(name="x", dataset="cifar10", teacher="resnet18", students=("cnn",),
                     ast=dict(temperature=6, omega=0.05, ratio=0.2))
    c.ast.tempreature = 6.0  # a typo in a config file (before lock)
    with pytest.raises(ValueError, match="config.ast.tempreature"):
        loader.validate(c)
    with pytest.raises(ValueError, match="config.ast.omega"):
        study_config(name="x", dataset="cifar10", teacher="resnet18", students=("cnn",),
                     ast=dict(temperature=6, omega="high", ratio=0.2))


# ------------------------------------------------------------------ files and variants

def test_missing_config_lists_the_repository_configs():
    for spec in ("no_such_study", "configs/no_such_study.py"):
        with pytest.raises(FileNotFoundError) as info:
            loader.load_config(spec)
        message = str(info.value)
        assert "no_such_study" in message and "cifar10_resnet18" in message and "digits" in message


def test_unknown_variant_names_the_file_and_lists_variants():
    with pytest.raises(ValueError) as info:
        load("cifar10_resnet18", "paper")
    message = str(info.value)
    assert "cifar10_resnet18.py" in message and "'paper'" in message and "thesis, reference" in message


def _write(directory, name, body):
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


def test_bare_name_is_the_repository_config_not_a_file_of_the_current_directory(monkeypatch, tmp_path):
    _write(tmp_path, "digits.py", """
        raise RuntimeError("the current directory's digits.py was executed")
    """)
    monkeypatch.chdir(tmp_path)
    assert loader.resolve_config_path("digits") == os.path.join(CONFIGS, "digits.py")
    assert loader.load_config("digits:reference").name == "digits"
    # An explicit path is the file itself.
    with pytest.raises(ValueError, match=r"config file \./digits\.py: RuntimeError: the current directory's"):
        loader.load_config("./digits.py")
    with pytest.raises(ValueError, match="RuntimeError"):
        loader.load_config("digits.py")


def test_explicit_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert loader.load_config("ast_jax/configs/cifar10_resnet18.py:reference").pgd.space == "reference"
    monkeypatch.chdir(tmp_path)
    assert loader.load_config(os.path.join(CONFIGS, "cifar10_resnet18.py")).ast.ratio == 0.2
    _write(tmp_path, "mine.py", """
        from ast_jax.configs.common import study_config

        def get_config(variant="thesis"):
            return study_config(name="mine", dataset="digits", teacher="cnn", students=("cnn",), variant=variant,
                                ast=dict(temperature=4.0, omega=0.1, k=2))
    """)
    mine = loader.load_config("mine.py:reference", ["--config.seed", "3"])
    assert (mine.name, mine.seed, mine.ast.target_statistics) == ("mine", 3, "after_train_forward")


@pytest.mark.parametrize("body, message", [
    ("def get_config(variant='thesis')\n    return 1\n", r"config file .*broken\.py, line 1: .*; fix its syntax"),
    ("def get_config(variant='thesis'):\n    return {}['missing']\n", r"config file .*broken\.py: KeyError: 'missing'"),
    ("import no_such_module_of_ast_jax\n", r"config file .*broken\.py: ModuleNotFoundError: No module named"),
    ("x = 1\n", r"config file .*broken\.py: it defines no get_config"),
    ("def get_config(variant='thesis'):\n    return {'a': 1}\n", r"get_config returned dict, expected a ConfigDict"),
])
def test_a_broken_config_file_is_one_error_naming_it(tmp_path, body, message):
    path = tmp_path / "broken.py"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as info:
        loader.load_config(str(path))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ json and helpers

def test_to_json_is_sorted_plain_json():
    text = settings.to_json(loader.to_settings(load("cifar100_resnet18", "reference")))
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["ast"]["k"] == 7 and data["ast"]["ratio"] is None
    assert data["train"]["milestones"] == [60, 120, 160]
    assert text != settings.to_json(loader.to_settings(load("cifar100_resnet18", "thesis")))
    # Key order does not matter.
    assert settings.to_json({"b": 1, "a": {"y": (1, 2), "x": None}}) == settings.to_json({"a": {"x": None, "y": (1, 2)}, "b": 1})


def test_sparsity_k_is_robust_to_float_noise():
    section = ml_collections.ConfigDict({"k": None, "ratio": 0.29})
    assert settings.sparsity_k(section, 100) == 29
    section = ml_collections.ConfigDict({"k": None, "ratio": 0.015})
    assert settings.sparsity_k(section, 200) == 3


@pytest.mark.parametrize("name", ["cifar10_resnet18", "cifar100_resnet18"])
def test_cifar_full_grid_variant_sweeps_every_published_defence_setting(name):
    from ast_jax.studies.victims import parse_victim

    thesis, full = load(name), load(name, "full_grid")
    dataset, classes = thesis.data.name, 10 if thesis.data.name == "cifar10" else 100
    victims = [parse_victim(v, dataset, classes, "v") for v in full.matrix.victims]
    betas = {d: sorted(dict(v.params)["beta"] for v in victims if v.defense == d) for d in ("dcp", "reverse_sigmoid")}
    assert betas["dcp"] == pytest.approx([0, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1.0, 1.2, 1.5])
    assert betas["reverse_sigmoid"] == pytest.approx([0, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28])
    assert sorted((dict(v.params)["k"], dict(v.params)["decimals"]) for v in victims if v.defense == "topk_round") == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert set(thesis.matrix.victims) < set(full.matrix.victims)  # the default keeps its subset; its cells are reused
    assert len(thesis.matrix.victims) < len(full.matrix.victims) == len(thesis.teachers) + 13 + 11 + 1 + 6
    assert settings.study_record(full) == settings.study_record(thesis)  # the same teachers and students
    assert "knockoff_dcp" in full.matrix.attacks and "knockoff_dcp" not in thesis.matrix.attacks
    assert (full.attacks.knockoff_dcp.recipe, full.attacks.knockoff_dcp.clone) == ("dcp", "resnet34")
