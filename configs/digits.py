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
    thesis's 0.1); teachers 30 epochs with lr x0.1 at 20 and 25, CNN students 20 epochs; test
    accuracy every 10 epochs. Measured on this project's 2-core CPU machine (2026-11-23): each
    cell is one run of the base and AST teachers and their CNN students with `--config.seed=S`
    and the schedule overridden; AST teacher / AST student change against the base teacher /
    its student, in points:

        schedule (teacher / student epochs)  seed 0        seed 1        seed 2        seed 3        seed 4
        10 / 10 (x0.1 at 5, 8)               -0.6 / -1.9   -1.4 / -1.1   -1.4 / +0.8
        20 / 20 (x0.1 at 10, 15)             -1.1 / -1.1   -1.1 / -2.2   -1.9 / -1.7
        30 / 20 (x0.1 at 15, 23)             -1.9 / -4.4   -1.7 / -2.5   -3.1 / -3.1
        30 / 20 (x0.1 at 20, 25), chosen     -0.3 / -3.9   -0.8 / -4.4   -2.8 / -3.6   -3.6 / -4.2   -1.4 / -7.5
        40 / 10 (x0.1 at 20, 30)             -0.8 / -3.1   -2.2 / -5.0   -1.4 / -0.6
        40 / 20 (x0.1 at 20, 30)             -0.8 / -3.6   -2.2 / -3.9   -1.4 / -1.9
        10 / 40 (x0.1 at 5, 8)               -0.6 / -1.1   -1.4 / -0.6   -1.4 / +0.3

    The defence needs the teacher's schedule more than the student's, and a long high-lr
    phase: the chosen one costs the AST teacher 1.8 points on average (0.3-3.6; 1 point is 3.6
    of the 360 test images) and its student 4.7 (3.6-7.5), in line with SPEC §9's 40-epoch
    -4.0 +- 0.2. The old 10-epoch demo's effect was within the seed noise. 40 / 20 takes
    4 min 16 s, too close to the five-minute budget on a slower machine of the same kind;
    the chosen schedule takes about 3.5 min (see the README).
  * CNN student: the thesis's CNN recipe (Adam 1e-3, no decay, no weight decay), 20 epochs.
  * PGD: the thesis's eps 0.3, step 0.01, 40 steps in pixel space. SPEC §9: the effect appears
    only with this large eps (at eps <= 32/255 the adversarial images no longer fool the AST
    model and its target is just the true class).
  * AST: tau 10, omega 0.05, k 2 (ratio 0.2) -- SPEC §9's best setting (omega*tau ~ 0.5: teacher
    -1.6 points, student -4.0 +- 0.2 points against the student of the base teacher, at 40
    epochs); the thesis's CIFAR-10 tau 6 gave only -1.6 points on the student, omega*tau >= 0.8
    costs the teacher 4+ points and omega 0.2 collapses it. A sweep of omega on the earlier 10 / 10
    schedule (one run each, teacher / student change in points) gave 0.05: -0.56 / -1.67, 0.065: -1.11 / -2.50,
    0.07: -1.39 / -1.11, 0.08: -3.06 / -3.33, 0.1: -2.78 / -4.17: no setting both keeps the
    teacher within a point and moves the student beyond the noise, so SPEC §9's value stays.
  * NT tau 7 / omega 0.04 and STT ratio 0.2 / tau 7 / omega 0.04: not tuned on digits; the
    CIFAR-10 values with tau raised by the factor AST needed (6 -> 10, x5/3: 4 -> 6.7 ~ 7).
    With them the NT / STT students change by -1.67 / +0.28 points in the demo (seed 0; -0.83 /
    -0.28 at 40 epochs): these two defences slow the attack little here.
    KD attack tau 4 / omega 0.9 and ST ratio 0.2: the thesis's 10-class (CIFAR-10) values.
  * `reference` variant: there are no authors' values for digits; AST/NT/STT stay as above and
    only the PGD space (normalised with the digits mean/std), the pairing and the ST
    distillation (T 20, alpha 0.9) change.
"""

from ast_jax.config import CNN_STUDENT_TRAIN, study_config


def get_config(variant: str = "thesis"):
    return study_config(
        name="digits",
        dataset="digits",
        teacher="preresnet20",
        students=("cnn",),
        variant=variant,
        train=dict(batch_size=64, lr=0.05, epochs=30, milestones=(20, 25), lr_decay=0.1,
                   checkpoint_every=10, eval_every=10),
        ast=dict(temperature=10.0, alpha=0.05, k=2),
        ast_reference=None,  # no authors' values for digits: keep SPEC §9's
        student_train={"cnn": dict(CNN_STUDENT_TRAIN, epochs=20)},
    )
