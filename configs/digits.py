"""scikit-learn digits: the embedded CPU demo of the whole pipeline (not in the thesis).

1,437 training / 360 test 8x8 grey images, 10 classes, no augmentation. Teacher ResnetC-20,
CNN student; batch 64, SGD lr 0.05, teachers 30 epochs (lr x0.1 at 20 and 25), CNN students
20 epochs; PGD eps 0.3 / step 0.01 / 40 steps; AST tau 10, omega 0.05, k 2. The whole study
runs in under five minutes on two CPU cores. Why each value, with the seven schedules and the
omega sweep measured to choose them: docs/digits-schedule.md (starting point: docs/method.md §9).
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
        ast=dict(temperature=10.0, omega=0.05, k=2),
        ast_reference=None,  # no authors' values for digits: keep the thesis-variant values
        student_train={"cnn": dict(CNN_STUDENT_TRAIN, epochs=20)},
    )
