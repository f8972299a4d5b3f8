"""scikit-learn digits: the embedded CPU demo of the whole pipeline (SPEC §9; not in the thesis).

1,437 training / 360 test 8x8 grey images, 10 classes, no augmentation. The study must run end
to end (base teacher, PGD set, AST/NT/STT teachers, a CNN student from each of the 5 teachers)
in under five minutes on two CPU cores, which sets the schedule; the loss values come from
SPEC §9.

Why these values:
  * teacher `preresnet20` (ResnetC-20), student `cnn`: the architectures of the SPEC §9
    measurement (pre-activation ResNet-20 teacher, small CNN student). A `preresnet20` student
    (`--config.students=cnn,preresnet20`) adds about a minute.
  * schedule: batch 64 (22 steps per epoch), SGD lr 0.05 (a half-size batch, so half the
    thesis's 0.1), 10 epochs with lr x0.1 at 5 and 8: the longest that fits the five-minute
    budget. Measured on this project's 2-core CPU machine (2026-11-22): the demo takes 3-3.5 min
    from a fresh work directory and an empty compilation cache (about 9 s per epoch of all nine
    trainings, ~40 s of PGD, ~70 s of compilation), so 20 epochs would already reach ~5 min.
    At 10 epochs the AST effect is small and noisy (student -1.67 points against the base
    teacher's student; -0.83 at 15 epochs); the 40-epoch run of SPEC §9
    (`--config.train.epochs=40 --config.train.milestones=20,30
    --config.student_train.cnn.epochs=40`, 7 min) gives teacher -0.83 and student -6.11 points.
  * CNN student: the thesis's CNN recipe (Adam 1e-3, no decay, no weight decay) for the same
    10 epochs.
  * PGD: the thesis's eps 0.3, step 0.01, 40 steps in pixel space. SPEC §9: the effect appears
    only with this large eps (at eps <= 32/255 the adversarial images no longer fool the AST
    model and its target is just the true class).
  * AST: tau 10, omega 0.05, k 2 (ratio 0.2) -- SPEC §9's best setting (omega*tau ~ 0.5: teacher
    -1.6 points, student -4.0 +- 0.2 points against the student of the base teacher, at 40
    epochs); the thesis's CIFAR-10 tau 6 gave only -1.6 points on the student, omega*tau >= 0.8
    costs the teacher 4+ points and omega 0.2 collapses it. A 10-epoch sweep of omega (one run
    each, teacher / student change in points) gave 0.05: -0.56 / -1.67, 0.065: -1.11 / -2.50,
    0.07: -1.39 / -1.11, 0.08: -3.06 / -3.33, 0.1: -2.78 / -4.17: no setting both keeps the
    teacher within a point and moves the student beyond the noise, so SPEC §9's value stays.
  * NT tau 7 / omega 0.04 and STT ratio 0.2 / tau 7 / omega 0.04: not tuned on digits; the
    CIFAR-10 values with tau raised by the factor AST needed (6 -> 10, x5/3: 4 -> 6.7 ~ 7).
    With them the NT / STT students change by -0.56 / +0.83 points at 10 epochs and -0.83 /
    -0.28 at 40: these two defences barely slow the attack here.
    KD attack tau 4 / omega 0.9 and ST ratio 0.2: the thesis's 10-class (CIFAR-10) values.
  * `reference` variant: there are no authors' values for digits; AST/NT/STT stay as above and
    only the PGD space (normalised with the digits mean/std), the pairing and the ST
    distillation (T 20, alpha 0.9) change.
"""

from ast_jax.config import CNN_STUDENT_TRAIN, study_config

EPOCHS = 10


def get_config(variant: str = "thesis"):
    return study_config(
        name="digits",
        dataset="digits",
        teacher="preresnet20",
        students=("cnn",),
        variant=variant,
        train=dict(batch_size=64, lr=0.05, epochs=EPOCHS, milestones=(5, 8), lr_decay=0.1,
                   checkpoint_every=EPOCHS, eval_every=1),
        ast=dict(temperature=10.0, alpha=0.05, k=2),
        ast_reference=None,  # no authors' values for digits: keep SPEC §9's
        student_train={"cnn": dict(CNN_STUDENT_TRAIN, epochs=EPOCHS)},
    )
