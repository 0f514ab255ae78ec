r"""ResNet-20 on a 10,000-image CIFAR-10 subset: the CPU-scale stand-in for the paper's ResNet50.

  python launch/train.py --config=configs/cifar10_resnet20_cpu.py --temperature=50 \
      --workdir=runs/c10_r20_t50

About 20 s per epoch on a 2-core CPU (ResNet-20, ~550 img/s).
"""

from tempscale_tf.training import default_config


def get_config(arg=None):
    c = default_config()
    c.mixed_precision = False  # the committed tables were made in float32
    c.dataset = "cifar10"
    c.data_dir = "../shared/data"
    c.model = "resnet20_cifar"
    c.train_subset = 10000
    c.test_subset = 2000
    c.temperature = 1.0
    c.epochs = 15
    c.batch_size = 128
    c.lr = 0.1
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    if arg == "smoke":
        c.epochs, c.train_subset, c.test_subset = 1, 512, 256
    return c
