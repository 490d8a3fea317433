"""Algorithm plug-ins: the decorator path (a user's file), the entry-point path (an installed
package), broken plug-ins, and `algo=<plug-in>` from the command line."""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparse_offline_rl as sorl
from conftest import REPO, random_dataset, run_cli, write_d4rl_hdf5
from sparse_offline_rl.algorithms import base, plugins
from sparse_offline_rl.algorithms.plugins import PluginImportError, PluginWarning, config_defaults, store_algorithm_configs
from sparse_offline_rl.pruning import layer_weights
from sparse_offline_rl.training.trainer import StepInfo, train

PLUGIN_DIR = REPO / "examples" / "sorl_awac_plugin"
PLUGIN_FILE = PLUGIN_DIR / "sorl_awac_plugin.py"


@pytest.fixture
def clean_registry():
    """Each test starts from the built-ins only and leaves no plug-in behind."""
    import sparse_offline_rl.algorithms as algorithms

    algorithms.load_plugins()
    saved = dict(base._REGISTRY), algorithms._plugins_loaded, dict(plugins._errors), set(plugins._loaded)
    base._REGISTRY.pop("awac", None)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved[0])
    algorithms._plugins_loaded = saved[1]
    plugins._errors.clear()
    plugins._errors.update(saved[2])
    plugins._loaded.clear()
    plugins._loaded.update(saved[3])
    sys.modules.pop("sorl_awac_plugin", None)


def masks_hold(info: StepInfo) -> None:
    nets, targets = info.algo.networks(), info.algo.target_networks()
    for net, param_masks in info.masks.masks.items():
        online = layer_weights(nets[net])
        target = layer_weights(targets[net]) if net in targets else {}
        for pname, mask in param_masks.items():
            assert (online[pname][mask == 0] == 0).all(), f"{net}.{pname}"
            if pname in target:
                assert (target[pname][mask == 0] == 0).all(), f"target {net}.{pname}"


def write_entry_point_dist(site, entry_points: str) -> None:
    """What `pip install ./examples/sorl_awac_plugin` leaves in site-packages, minus the copy of the module."""
    dist = site / "sorl_awac_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sorl-awac-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)


ENTRY_POINTS = "[sparse_offline_rl.algorithms]\nawac = sorl_awac_plugin:AWAC\nbroken = sorl_no_such_module:Algo\n"


# -- decorator path ------------------------------------------------------------------------------
def test_single_file_plugin_trains_with_pruning_and_masks(tmp_path, fast_config, hopper_data, clean_registry):
    sorl.import_plugin(str(PLUGIN_FILE))
    assert "awac" in sorl.available_algorithms()
    assert sorl.import_plugin(str(PLUGIN_FILE)) is sys.modules["sorl_awac_plugin"]  # idempotent
    fast_config.update(algo={"name": "awac", "hidden": [32, 32]}, pruner={"name": "snip"}, steps=100)
    fast_config["eval"].update(every=100, episodes=1)
    summary = train(fast_config, tmp_path, dataset=hopper_data, callbacks=[masks_hold])
    assert summary["algo"] == "awac" and set(summary["density"]) == {"actor", "critic"}
    for density in summary["density"].values():
        assert density == pytest.approx(0.1, abs=0.01)


class WeightReadingQ(nn.Module):
    """A single Q-network that reads its layers' weights itself (`F.linear(x, layer.weight)`), as
    d3rlpy's or hand-written modules may: replacing its layers would break it."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(obs_dim + act_dim, hidden), nn.Linear(hidden, 1)])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.linear(torch.cat([obs, action], -1), self.layers[0].weight, self.layers[0].bias))
        return F.linear(h, self.layers[1].weight, self.layers[1].bias).squeeze(-1)[None]  # (1, B)


def test_plugin_gets_sparse_kernels_only_for_the_frameworks_layers(tmp_path, fast_config, hopper_data, clean_registry):
    """AWAC with its critic swapped for one of plain nn.Linear layers: forced sparse kernels convert
    the actor (built by networks.mlp) and leave the critic dense-masked, and the run trains."""
    from sparse_offline_rl.algorithms.networks import adam, frozen_copy
    from sparse_offline_rl.sparse.linear import sparse_layers

    awac = sorl.import_plugin(str(PLUGIN_FILE))

    class MixedAWAC(awac.AWAC):
        def __init__(self, config, spec):
            super().__init__(config, spec)
            self.critic = WeightReadingQ(spec.obs_dim, spec.act_dim, config.hidden[0])
            self.critic_target = frozen_copy(self.critic)
            self.critic_opt = adam(self.critic, config.critic_lr)

    sorl.register_algorithm("mixed_awac")(MixedAWAC)
    fast_config.update(algo={"name": "mixed_awac", "hidden": [32, 32]}, pruner={"name": "random"}, steps=40,
                       sparse_kernels="sparse")
    fast_config["eval"].update(every=40, episodes=1)
    layers: dict = {}

    def record(info: StepInfo) -> None:
        masks_hold(info)
        layers.update({net: set(sparse_layers(module)) for net, module in info.algo.networks().items()})

    summary = train(fast_config, tmp_path, dataset=hopper_data, callbacks=[record])
    assert layers == {"actor": {"net.0.weight", "net.2.weight", "net.4.weight"}, "critic": set()}
    reasons = {net: {li["kernel_reason"] for li in info["layers"].values()} for net, info in summary["pruning"]["networks"].items()}
    assert reasons == {"actor": {"forced by mode"}, "critic": {"not eligible"}}
    assert summary["density"]["critic"] == pytest.approx(0.1, abs=0.01)


def test_optim_a_plugin_does_not_build_is_refused_not_ignored(fast_config, clean_registry):
    """AWAC builds its own Adam: `optim=lamb` must fail in one line, not train with Adam labelled lamb."""
    from sparse_offline_rl.errors import ConfigError
    from sparse_offline_rl.training.trainer import validate_config

    sorl.import_plugin(str(PLUGIN_FILE))
    fast_config.update(algo={"name": "awac", "hidden": [32, 32]}, optim="lamb")
    with pytest.raises(ConfigError, match=r"optim='lamb' is invalid for algo=awac: it builds its own optimizers \(adam\)"):
        validate_config(fast_config)
    fast_config.update(algo={"name": "iql"})
    validate_config(fast_config)  # the built-ins build theirs with make_optimizer


def test_plugin_config_defaults_become_a_hydra_entry(clean_registry):
    sorl.import_plugin(str(PLUGIN_FILE))
    assert "awac" in store_algorithm_configs(REPO / "configs" / "algo")
    defaults = config_defaults("awac")
    assert defaults["name"] == "awac" and defaults["hidden"] == [256, 256] and defaults["lam"] == 1.0


def test_config_without_defaults_is_rejected_with_its_name(clean_registry):
    @dataclass
    class NeedsValue:
        width: int

    @sorl.register_algorithm("needs_value")
    class Algo:
        Config = NeedsValue

    with pytest.raises(TypeError, match="needs_value.*NeedsValue needs a default"):
        config_defaults("needs_value")


def test_bad_plugin_module_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad_algo.py"
    bad.write_text("import sorl_definitely_missing\n")
    with pytest.raises(PluginImportError, match="bad_algo.py' failed to import: ModuleNotFoundError"):
        sorl.import_plugin(str(bad))
    assert "bad_algo" not in sys.modules


@pytest.mark.slow  # a subprocess: python run.py / a standalone interpreter
def test_cli_trains_a_single_file_plugin(tmp_path):
    data = write_d4rl_hdf5(tmp_path / "tiny-hopper.hdf5", random_dataset("hopper", n=600))
    run_dir = tmp_path / "run"
    result = run_cli(
        f"plugins={PLUGIN_FILE}", "algo=awac", "algo.hidden=[16,16]", "algo.lam=2.0", "sparsity=0.9", "pruner=random",
        "pruner.scope=layer",  # a 16x16 net at 0.9 under one global threshold can lose a whole layer by chance
        f"dataset={data}", "steps=20", "batch_size=32", "log_every=10", "eval.every=20", "eval.episodes=1",
        "checkpoint_every=20", "tensorboard=false", "progress=false", "verbose=false", "threads=1",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "awac" and summary["config"]["algo"]["lam"] == 2.0
    assert summary["config"]["plugins"] == [str(PLUGIN_FILE)]  # recorded with the run
    assert summary["density"]["actor"] == pytest.approx(0.1, abs=0.02)


@pytest.mark.slow  # a subprocess: python run.py / a standalone interpreter
def test_cli_reports_a_missing_plugin_file_in_one_line():
    result = run_cli("plugins=no_such_algo.py", "algo=iql", "--cfg", "job")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: plugin 'no_such_algo.py' failed to import: FileNotFoundError: no such file: {REPO / 'no_such_algo.py'}"
    ]


def test_plugin_argument_forms():
    spec = importlib.util.spec_from_file_location("sorl_run_script", REPO / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.plugin_specs(["algo=awac", "plugins=a.py", "--cfg", "job"]) == (["a.py"], ["algo=awac", "++plugins=[a.py]", "--cfg", "job"])
    assert run.plugin_specs(["+plugins=[a.py,lab.b]", "seed=1"]) == (["a.py", "lab.b"], ["++plugins=[a.py,lab.b]", "seed=1"])
    assert run.plugin_specs(["seed=1"]) == ([], ["seed=1"])
    with pytest.raises(ValueError, match="plugins takes a module or file"):
        run.plugin_specs(["plugins=[1,2]"])


# -- entry-point path ----------------------------------------------------------------------------
def test_entry_point_plugin_is_discovered_lazily_and_a_broken_one_is_reported(tmp_path, monkeypatch, clean_registry):
    import sparse_offline_rl.algorithms as algorithms

    write_entry_point_dist(tmp_path / "site", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    algorithms._plugins_loaded = False  # as in a fresh process
    plugins._loaded.clear()
    assert "sorl_awac_plugin" not in sys.modules

    with pytest.warns(PluginWarning, match=r"plug-in 'broken' \(sorl_no_such_module:Algo\) failed to load.*ModuleNotFoundError"):
        entry = sorl.get_algorithm("awac")
    assert entry.factory is sys.modules["sorl_awac_plugin"].AWAC
    assert sorl.plugin_errors()["broken"].startswith("ModuleNotFoundError: No module named 'sorl_no_such_module'")
    spec = sorl.ProblemSpec(obs_dim=11, act_dim=3)
    for name in ("awac", "iql", "td3bc", "cql"):  # built-ins unaffected by the broken plug-in
        algo = sorl.make_algorithm(name, spec, {"hidden": [8]})
        assert algo.act(torch.zeros(2, 11)).shape == (2, 3)


def test_entry_point_class_without_decorator_is_registered_under_the_entry_point_name(tmp_path, monkeypatch, clean_registry):
    import sparse_offline_rl.algorithms as algorithms

    (tmp_path / "undecorated_algo.py").write_text(
        "from dataclasses import dataclass\n"
        "from sorl_awac_plugin import AWAC\n\n"
        "class Plain(AWAC):\n    pass\n"
    )
    write_entry_point_dist(tmp_path, "[sparse_offline_rl.algorithms]\nplain_awac = undecorated_algo:Plain\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    algorithms._plugins_loaded = False
    plugins._loaded.clear()
    try:
        assert sorl.get_algorithm("plain_awac").factory.__name__ == "Plain"
    finally:
        sys.modules.pop("undecorated_algo", None)


@pytest.mark.slow  # a subprocess: python run.py / a standalone interpreter
def test_cli_selects_an_installed_plugin_without_plugins_option(tmp_path):
    write_entry_point_dist(tmp_path / "site", ENTRY_POINTS)
    result = run_cli("algo=awac", "algo.lam=3.0", "--cfg", "job", pythonpath=[str(tmp_path / "site"), str(PLUGIN_DIR)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "name: awac" in result.stdout and "lam: 3.0" in result.stdout
    assert "plug-in 'broken'" in result.stderr and "ModuleNotFoundError" in result.stderr
