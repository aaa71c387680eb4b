"""Network builders: a compact CNN trained from scratch, and Keras applications.

Every model takes the preprocessed grey batch ``(N, size, size, 1)`` in [0, 1] and ends in a
``logits`` Dense layer followed by a ``probabilities`` activation (sigmoid for the binary
task, softmax over normal / bacterial / viral for the type task). The layer named in
:data:`GRADCAM_LAYER` (or, for applications, the nested ``backbone``) is the last feature map;
everything after it is a plain chain, which Grad-CAM relies on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from screener.errors import ModelError

if TYPE_CHECKING:
    import keras

#: The constructor name in ``keras.applications`` and the input mode of each backbone:
#: ``tf`` = x / 127.5 - 1, ``torch`` = ImageNet mean / std on x / 255, ``caffe`` = ImageNet
#: BGR mean subtracted (channel order is moot for grey), ``raw`` = the model rescales itself.
APPLICATIONS: dict[str, tuple[str, str]] = {
    "inceptionv3": ("InceptionV3", "tf"),
    "vgg16": ("VGG16", "caffe"),
    "densenet121": ("DenseNet121", "torch"),
    "mobilenetv2": ("MobileNetV2", "tf"),
    "efficientnetb0": ("EfficientNetB0", "raw"),
}
BACKBONES = ("small_cnn", *APPLICATIONS)
#: Smallest input each application accepts.
MIN_INPUT = {
    "inceptionv3": 75,
    "vgg16": 32,
    "densenet121": 32,
    "mobilenetv2": 32,
    "efficientnetb0": 32,
}
GRADCAM_LAYER = "features"
BACKBONE_LAYER = "backbone"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def n_outputs(task: str) -> int:
    return 3 if task == "type" else 1


def _head(x: Any, task: str, dropout: float) -> Any:
    import keras

    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(n_outputs(task), name="logits")(x)
    activation = "softmax" if task == "type" else "sigmoid"
    return keras.layers.Activation(activation, name="probabilities", dtype="float32")(x)


def build_small_cnn(input_size: int, task: str, width: int = 32) -> keras.Model:
    """A compact VGG-style CNN with batch norm: five stages, about 0.4 M parameters.

    A strided stem keeps the cost low at 192-224 px on a CPU; later stages use separable
    convolutions. Built for from-scratch training on a few thousand films.
    """
    import keras
    from keras import layers

    def conv(x: Any, filters: int, name: str, separable: bool = False, stride: int = 1) -> Any:
        if separable:
            x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
        else:
            x = layers.Conv2D(
                filters, 3, strides=stride, padding="same", use_bias=False, name=name
            )(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = conv(inputs, width // 2, "stem", stride=2)
    x = conv(x, width, "s1_conv")
    x = layers.MaxPooling2D(name="s1_pool")(x)
    x = conv(x, width * 2, "s2_conv1")
    x = conv(x, width * 2, "s2_conv2", separable=True)
    x = layers.MaxPooling2D(name="s2_pool")(x)
    x = conv(x, width * 4, "s3_conv1", separable=True)
    x = conv(x, width * 4, "s3_conv2", separable=True)
    x = layers.MaxPooling2D(name="s3_pool")(x)
    x = conv(x, width * 8, "s4_conv1", separable=True)
    x = conv(x, width * 8, "s4_conv2", separable=True)
    x = layers.MaxPooling2D(name="s4_pool")(x)
    x = conv(x, width * 8, "s5_conv1", separable=True)
    x = layers.SpatialDropout2D(0.1, name="s5_drop")(x)
    x = conv(x, width * 8, GRADCAM_LAYER, separable=True)
    return keras.Model(inputs, _head(x, task, 0.4), name="small_cnn")


def _input_adapter(x: Any, mode: str) -> Any:
    """[0, 1] grey -> the 3-channel range an application's pretrained weights expect."""
    from keras import layers

    x = layers.Rescaling(255.0, name="to_255")(x)
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if mode == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_tf_range")(x)
    if mode == "torch":
        mean = [255.0 * m for m in _IMAGENET_MEAN]
        var = [(255.0 * s) ** 2 for s in _IMAGENET_STD]
        return layers.Normalization(mean=mean, variance=var, name="imagenet_norm")(x)
    if mode == "caffe":
        var = [1.0, 1.0, 1.0]
        return layers.Normalization(mean=list(_CAFFE_MEAN_BGR), variance=var, name="caffe_norm")(x)
    return x


def build_application(
    backbone: str, input_size: int, task: str, weights: str | None
) -> keras.Model:
    """A Keras application (``include_top=False``) with a grey adapter and a new head.

    ``weights`` is passed to the application constructor unchanged: ``"imagenet"`` (Keras
    downloads the file when the machine can reach the internet), a local weights file path
    (an air-gapped site's way), or ``None`` for random initialisation.
    """
    import keras

    if backbone not in APPLICATIONS:
        raise ModelError(f"backbone {backbone!r} is not one of {BACKBONES}")
    if input_size < MIN_INPUT[backbone]:
        raise ModelError(f"backbone {backbone} needs an input of at least {MIN_INPUT[backbone]} px")
    ctor_name, mode = APPLICATIONS[backbone]
    ctor = getattr(keras.applications, ctor_name)
    try:
        app = ctor(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
    except (ValueError, OSError) as exc:
        raise ModelError(f"cannot build {backbone} with weights {weights!r}: {exc}") from exc
    app.name = BACKBONE_LAYER
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = _input_adapter(inputs, mode)
    x = app(x)
    return keras.Model(inputs, _head(x, task, 0.3), name=backbone)


def build_model(
    backbone: str, input_size: int, task: str, weights: str | None = None, *, width: int = 32
) -> keras.Model:
    """Build the network for ``backbone`` (see :data:`BACKBONES`); ``width`` is small_cnn's."""
    if task not in ("binary", "type"):
        raise ModelError(f"task {task!r} is not 'binary' or 'type'")
    if backbone == "small_cnn":
        if weights not in (None, "none"):
            raise ModelError("small_cnn is trained from scratch; --weights must be 'none'")
        return build_small_cnn(input_size, task, width)
    return build_application(backbone, input_size, task, weights)


def gradcam_layer(backbone: str) -> str:
    """Name of the layer whose output Grad-CAM weighs: the one feeding the ``pool`` layer."""
    return f"{GRADCAM_LAYER}_relu" if backbone == "small_cnn" else BACKBONE_LAYER


#: Name prefix of the ensemble members nested in an ensemble network.
MEMBER_PREFIX = "member"


def build_ensemble(members: list[keras.Model], task: str) -> keras.Model:
    """One network that averages its members' logits (one member: that member, unchanged).

    Each member becomes a nested model ``member<i>`` from its input to its ``logits``
    layer; the ensemble's own ``logits`` is their mean and ``probabilities`` its
    sigmoid / softmax, so the bundle still holds a single ``model.keras``.
    """
    import keras

    if len(members) == 1:
        return members[0]
    inputs = keras.Input(members[0].input_shape[1:], name="image")
    logits = [
        keras.Model(m.input, m.get_layer("logits").output, name=f"{MEMBER_PREFIX}{i}")(inputs)
        for i, m in enumerate(members)
    ]
    mean = keras.layers.Average(name="logits")(logits)
    activation = "softmax" if task == "type" else "sigmoid"
    outputs = keras.layers.Activation(activation, name="probabilities", dtype="float32")(mean)
    return keras.Model(inputs, outputs, name="ensemble")


def members_of(model: keras.Model) -> list[keras.Model]:
    """The networks from input to ``logits`` inside ``model``: its members, or itself."""
    import keras

    nested = [layer for layer in model.layers if layer.name.startswith(MEMBER_PREFIX)]
    if nested:
        return nested
    return [keras.Model(model.input, model.get_layer("logits").output, name=f"{MEMBER_PREFIX}0")]
