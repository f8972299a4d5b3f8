"""scikit-learn digits: the embedded CPU demo of the whole pipeline (not in the thesis).

1,437 training / 360 test 8x8 grey images, 10 classes, no augmentation. Teacher ResnetC-20,
CNN student; batch 64, SGD lr 0.05, teachers 30 epochs (lr x0.1 at 20 and 25), CNN students
20 epochs; PGD eps 0.3 / step 0.01 / 40 steps; AST tau 10, omega 0.04, k 2; the KD attack (and
the Stingy Teacher's distillation, which follows it) at AST's own temperature, tau 10, omega 0.9.
The demo (four seeds) took 7 min 18 s on two CPU cores shared with other work. Why each value:
the schedule and the first omega sweep in docs/notes/digits-schedule.md (starting point: docs/method.md §9); omega 0.04
and the attack's tau 10 in docs/notes/digits-demo-search.md (at the CIFAR-10 KD tau 4 the student
ends about where its AST teacher is; distilled at AST's tau it ends clearly below it).

Expected results (docs/results/digits-demo.md; 2026-12-05, 2 CPU cores, no accelerator, jax
0.10.2; seeds 0, 1, 2, 3; test accuracy in %, mean ± sample std over the seeds [95% interval]):

    ast-jax demo                       # 7 min 18 s with the CPU shared (load 7-10), 5 min 41 s of CPU time

    base teacher 98.82 ± 0.66, its CNN student 99.31 ± 0.58
    AST teacher  97.43 ± 0.27, its CNN student 93.13 ± 1.63
    D = AST teacher - its student  +4.31 ± 1.64 [+1.69, +6.92] points (above zero)
    P = base teacher - AST teacher +1.39 ± 0.75 [+0.19, +2.59] points

Another processor or a program that rounds differently moves single runs by a point or more
(docs/notes/digits-demo-history.md). The attack matrix of this study (`ast-jax matrix --config
digits`, 2026-11-24 code, AST omega 0.05): docs/results/digits-matrix.md.
"""

from ast_jax.configs.common import (
    CNN_STUDENT_TRAIN,
    RETEMPER_GRID,
    TEACHER_VICTIMS,
    adaptive_attacks,
    defence_victims,
    study_config,
)

#: InI's and MeCo's schedules scaled to the demo's (docs/method.md §11; trained where `config.teachers`
#: names them, as in ast_jax/configs/digits_defences.py): InI's SGD (momentum 0.5, weight decay 1e-3) at the
#: demo's batch 64 and lr 0.05 for its 30 epochs, lr x0.1 at 12 and 24 (the MNIST schedule's 20 and
#: 40 of 50); MeCo's MNIST recipe, Adam 1e-3, batch 64, for 30 epochs.
DEFENCE_TRAIN = {
    "ini": dict(optimizer="sgd", lr=0.05, momentum=0.5, weight_decay=1e-3, batch_size=64, epochs=30,
                milestones=(12, 24), lr_decay=0.1),
    "meco": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, epochs=30, milestones=()),
}

#: `ast-jax matrix` (docs/method.md §10.5): every teacher, and the base teacher behind every kind of
#: output defence: DCP at beta .3/.9/1.5 and Reverse Sigmoid at .04/.64 (the ends and middle of the
#: small-data grid .3-1.5 and .04-.64, to fit the CPU budget; the whole grid is
#: `--config.matrix.victims` away), top-1, and rounding to 1 decimal.
MATRIX_VICTIMS = (*TEACHER_VICTIMS, *defence_victims(dcp_betas=(0.3, 0.9, 1.5), rs_betas=(0.04, 0.64),
                                                     rounding=((10, 1),)))
#: The CNN clone with the study's CNN recipe (Adam 1e-3), 10 epochs; small budgets (Knockoff 1,437
#: queries, JBDA 4 rounds to 1,200 points, DFME 10,000 queries) sized so that the matrix of these
#: five attacks (3 seeds) fits 20 minutes on 2 CPU cores. The adaptive attacks below add about 6 s
#: per KD-like cell and 1.5-5 min per Skeptical cell (its ResNet18 clone) on a shared 2-core
#: machine: about 2 hours for all 13 victims; restrict `--config.matrix.victims` (the teachers
#: alone: about 30 min) or `--config.matrix.attacks` for less.
_CLONE = dict(optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, batch_size=64, epochs=10,
              schedule="multistep", milestones=())
MATRIX_ATTACKS = {
    "kd": dict(_CLONE, kind="kd", temperature=4.0, omega=0.9),
    "knockoff_soft": dict(_CLONE, kind="knockoff", query_set="fashion_to_digits", budget=1437, labels="soft"),
    "knockoff_hard": dict(_CLONE, kind="knockoff", query_set="fashion_to_digits", budget=1437, labels="hard"),
    "jbda": dict(_CLONE, kind="jbda", seeds=150, rounds=4, epochs=5),
    "dfme": dict(kind="dfme", budget=10_000, batch_size=64, ngf=16, iterations_per_epoch=10),
    # The adaptive attacks (docs/method.md §10.6) with the same clone schedule: kd_hard; kd_retemper
    # over the τ_a grid and the defences' own τ (AST 10, NT/STT 7), leaving out τ_a = 4, which is the
    # kd cell itself; the Skeptical Student on a ResNet18 trunk (its clone must be a ResNet).
    **adaptive_attacks(_CLONE, kd={"temperature": 4.0, "omega": 0.9},
                       taus=sorted({*RETEMPER_GRID, 7.0, 10.0} - {4.0}), skeptical_clone="resnet18"),
}


def get_config(variant: str = "thesis"):
    return study_config(
        name="digits",
        dataset="digits",
        teacher="preresnet20",
        students=("cnn",),
        variant=variant,
        train=dict(batch_size=64, lr=0.05, epochs=30, milestones=(20, 25), lr_decay=0.1,
                   checkpoint_every=10, eval_every=10),
        ast=dict(temperature=10.0, omega=0.04, k=2),
        kd=dict(temperature=10.0),  # the attacker distils at AST's own temperature (digits-demo-search.md)
        ast_reference=None,  # no authors' values for digits: keep the thesis-variant values
        student_train={"cnn": dict(CNN_STUDENT_TRAIN, epochs=20)},
        teacher_train=DEFENCE_TRAIN,
        matrix=dict(victims=MATRIX_VICTIMS, attacks=tuple(MATRIX_ATTACKS), clone="cnn", seeds=(0, 1, 2), batch_size=512),
        attacks=MATRIX_ATTACKS,
    )
