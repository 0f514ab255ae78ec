r"""ResNet50 (CIFAR stem) on CIFAR-10 from scratch: the paper's Table I setting.

  python launch/train.py --config=configs/cifar10_resnet50.py --temperature=70 \
      --data_dir=../shared/data --workdir=runs/cifar10_resnet50_t70

200 epochs, batch 128, SGD momentum 0.9, lr 0.1 (scaled linearly with batch / 128), weight decay
5e-4, cosine schedule. Expect ~15-20 GPU-hours on one modern GPU; far too slow for a CPU (use
configs/cifar10_resnet20_cpu.py there). `:smoke` shrinks it to 1 epoch on 512 images.
"""

from tempscale_tf.training import default_config


def get_config(arg=None):
    c = default_config()
    c.dataset = "cifar10"
    c.data_dir = "../shared/data"
    c.model = "resnet50_cifar"
    c.temperature = 1.0
    c.epochs = 200
    c.batch_size = 128
    c.lr = 0.1 * c.batch_size / 128
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    if arg == "smoke":
        c.epochs, c.train_subset, c.test_subset, c.batch_size = 1, 512, 256, 64
    return c
