"""No host-device synchronisation per model call (issue 17: a pure numerical core behind one checked boundary).

Every run here has a U-Net (EDM-preconditioned, the package's ``unet``) and its state on PyTorch's ``meta``
device, where tensors have shapes but no values, under :class:`scoresde.checks.HostSyncCounter`, a
``TorchDispatchMode`` that counts reads of one value of a non-CPU tensor (``aten._local_scalar_dense``:
``bool``, ``.item()``, ``float``) and cross-device copies (``aten._to_copy``, ``aten.copy_``). On a GPU each
of them makes the host wait for every queued kernel.

What is asserted: a run makes at most a small constant number of them (the check of ``x_T`` where it enters
and the one read of the run's non-finite record at the end), and none per model call: the counts at two
step counts are equal.

Excluded: the samplers that are not fixed-step (adaptive ``ode`` and ``scipy_ode`` choose their steps from
the error on the host, ``torchsde`` steps inside torchsde, and ``scipy_ode`` integrates in NumPy on the host).
"""
from __future__ import annotations

import pytest
import torch
from test_sampler_registry import VARIANTS, _id

import scoresde as sd
from scoresde.checks import FiniteWatch, HostSyncCounter
from scoresde.guidance import classifier_free_guidance
from scoresde.nets import UNet
from scoresde.nets.precondition import EDMPrecondition
from scoresde.samplers import SAMPLERS, sample

SHAPE = (1, 8, 8)
#: the syncs a sample() run is allowed whatever its length: the finiteness check of x_T where it enters, and
#: the one transfer of the run's non-finite record after the loop
PER_RUN = 2


def _unet(sde, num_classes=None):
    torch.manual_seed(0)
    net = UNet(SHAPE[0], sde, "eps", image_size=SHAPE[1], channels=8, channel_mult=(1, 2), num_res_blocks=1,
               norm_groups=4, num_classes=num_classes)
    return EDMPrecondition(net, sde, "eps", sigma_data=0.5).to("meta")


@pytest.fixture(scope="module")
def vp():
    return sd.VPSDE()


@pytest.fixture(scope="module")
def model(vp):
    return sd.ScoreModel(_unet(vp), vp, "eps")


def _syncs(run, grad: bool = False) -> tuple[int, list]:
    with torch.set_grad_enabled(grad), HostSyncCounter() as c:
        run()
    return c.total, c.events


def _fixed_step(name, opts) -> bool:
    return name != "torchsde" and not SAMPLERS[name](**opts).adaptive


# samplers that sync per step in a library they delegate to (not in scoresde's code): torchdiffeq's fixed-grid
# loop moves its times to x's device and reads them back (its grid assertion, the output-time search and the
# interpolation test: 4 reads per interval in torchdiffeq 0.2.5). The stepped samplers are the zero-sync route.
_SAMPLER_SYNCS = {
    "ode": "torchdiffeq's fixed-grid solver reads its device times on the host every step (not scoresde's code)",
}


def _expected_to_sync(name, opts) -> str | None:
    return _SAMPLER_SYNCS.get(name)


FIXED = [pytest.param(n, o, id=f"{n}[{_id(o)}]",
                      marks=[pytest.mark.xfail(strict=True, reason=_expected_to_sync(n, o))]
                      if _expected_to_sync(n, o) else [])
         for n, o in VARIANTS if _fixed_step(n, o)]


def test_every_fixed_step_sampler_is_covered():
    names = {p.values[0] for p in FIXED}
    assert names == {n for n, o in VARIANTS if _fixed_step(n, o)} and len(names) >= 8, names


@pytest.mark.parametrize("name, opts", FIXED)
def test_a_sampler_makes_no_sync_per_model_call(name, opts, vp, model):
    x_T = torch.zeros(2, *SHAPE, device="meta")
    counts, nfes = [], []
    for steps in (2, 3):
        n0 = model.nfe
        total, events = _syncs(lambda steps=steps: sample(model, vp, name, steps, x_T=x_T, check_finite="record",
                                                         generator=torch.Generator().manual_seed(0), **opts))
        counts.append(total)
        nfes.append(model.nfe - n0)
    assert nfes[1] > nfes[0]
    assert counts[0] == counts[1], f"{name}: {counts[1] - counts[0]} more syncs for {nfes[1] - nfes[0]} more calls"
    assert counts[1] <= PER_RUN, f"{name}: {counts[1]} syncs in a run: {events}"


def test_a_class_conditional_run_copies_its_labels_once(vp):
    net = _unet(vp, num_classes=3)
    x_T = torch.zeros(2, *SHAPE, device="meta")

    def run(steps):
        guided = classifier_free_guidance(lambda x, t, y: net(x, t, y), vp, torch.tensor([0, 2]), 2.0, null_label=3)
        sample(guided, vp, "dpm_solver++", steps, x_T=x_T, check_finite="record")

    counts = [_syncs(lambda s=s: run(s))[0] for s in (3, 6)]
    assert counts[0] == counts[1] <= PER_RUN + 1  # + the labels, copied to the device at the first call


def test_check_finite_step_reads_every_call_as_asked(vp, model):
    # the debugging mode does what it says: one read per model output and per state, on top of the run's
    x_T = torch.zeros(2, *SHAPE, device="meta")
    counts = [_syncs(lambda s=s: sample(model, vp, "ddim", s, x_T=x_T, check_finite="step"))[0] for s in (3, 6)]
    assert counts[1] - counts[0] == 2 * 3


def test_the_scheduler_step_makes_no_sync():
    from scoresde.interop import ScoresdeScheduler

    counts = []
    for steps in (3, 6):
        sched = ScoresdeScheduler(method="dpm_solver++", options={"order": 2})
        net = _unet(sched.sde)

        def run(sched=sched, net=net, steps=steps):
            sched.set_timesteps(steps)
            x = torch.zeros(2, *SHAPE, device="meta")
            for t in sched.timesteps:  # on the CPU: the scheduler reads the timestep it is given to check it
                out = net(x, torch.full((2,), float(t), device="meta"))
                x = sched.step(out, t, x).prev_sample
        counts.append(_syncs(run)[0])
    # the network's first call copies the DiscreteVPSDE's knots to the device, once per SDE
    assert counts[0] == counts[1] <= 1


def test_a_training_step_makes_no_sync_in_the_model_path(vp):
    # the loss (time draw, perturbation, the network, the conversion) syncs never; the trainer's step adds its
    # one transfer of the step's statistics and torch's AveragedModel's check of its counter
    from scoresde.config import TrainConfig
    from scoresde.training import Trainer

    class MetaImages:
        event_shape, levels, num_classes = SHAPE, None, None

        def std(self):
            return 0.5

        def draw(self, n, generator, device):
            return torch.randn(n, *SHAPE, generator=generator, device=device), None

    cfg = TrainConfig(data="images", net="unet", batch_size=4, progress=False, tensorboard=False,
                      net_kwargs={"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "norm_groups": 4})
    trainer = Trainer(cfg, data=MetaImages())
    trainer.net.to("meta")          # in place: the optimiser's parameters move with it
    trainer.ema.to("meta")
    trainer.device = torch.device("meta")
    model = sd.ScoreModel(trainer.net, trainer.sde, cfg.parameterization)
    x0 = torch.zeros(4, *SHAPE, device="meta")
    g = torch.Generator().manual_seed(0)
    assert _syncs(lambda: sd.losses.dsm_loss(model, x0, generator=g).mean())[0] == 0
    _syncs(trainer.train_step, grad=True)  # the first step builds the optimiser's state and the bucket edges
    one = _syncs(trainer.train_step, grad=True)
    two = _syncs(lambda: (trainer.train_step(), trainer.train_step()), grad=True)
    assert two[0] == 2 * one[0] and one[0] <= 3, one[1]


def test_the_likelihood_drift_makes_no_sync(vp, model):
    # log_likelihood's per-call path: the probability-flow drift in log-SNR (and its divergence, by autograd);
    # a whole solve cannot run on meta (torchdiffeq's step loop reads its times), and its fixed-grid solver reads
    # device times per step by itself; likelihood._FiniteDrift also reads the drift per call (it is needed by the
    # adaptive methods only)
    from scoresde.likelihood import divergence

    flow = vp.probability_flow(model.score)
    lam = torch.tensor(0.5, dtype=torch.float64, device="meta")
    y = torch.zeros(2, *SHAPE, device="meta")
    probes = torch.zeros(1, 2, *SHAPE, device="meta")
    watch = FiniteWatch("end")  # as log_likelihood runs it: the model's outputs recorded, read after the solve
    with model.watching(watch):
        total, events = _syncs(lambda: divergence(lambda y_: flow.lambda_drift(lam, y_), y, probes=probes))
    assert total == 0, events
