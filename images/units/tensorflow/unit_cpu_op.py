"""A tensor op and a gradient on the CPU, checked against a known answer."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

with tf.device("/CPU:0"):
    a = tf.reshape(tf.range(6, dtype=tf.float32), (2, 3))
    product = tf.matmul(a, tf.ones((3, 2)))
    assert product.numpy().tolist() == [[3.0, 3.0], [12.0, 12.0]], product
    w = tf.Variable([0.5, -1.0, 2.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.linalg.matvec(a, w))
    grad = tape.gradient(loss, w)
    assert grad.numpy().tolist() == [3.0, 5.0, 7.0], grad
print("cpu matmul and gradient: ok")
