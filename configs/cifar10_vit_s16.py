r"""ViT-S/16 (ImageNet-pretrained) fine-tuned on CIFAR-10 at 224x224: the paper's ViT setting.

  python launch/train.py --config=configs/cifar10_vit_s16.py --temperature=70 \
      --config.model_kwargs.weights_path=/path/to/ViT-S_16.npz --workdir=runs/c10_vits_t70

Without weights_path the ViT trains from scratch (not the paper's setting). See the README's
"Pretrained ViT" section for the weights file.
"""

from tempscale_tf.training import default_config


def get_config(arg=None):
    c = default_config()
    c.dataset = "cifar10"
    c.data_dir = "../shared/data"
    c.model = "vit_s16"
    c.normalize = False  # ViT's own (x - 0.5) / 0.5 normalisation is in the model
    c.model_kwargs.weights_path = ""
    c.temperature = 1.0
    c.epochs = 20
    c.batch_size = 128
    c.lr = 0.01
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    if arg == "smoke":
        c.epochs, c.train_subset, c.test_subset, c.batch_size = 1, 64, 32, 16
    return c
