"""A trained model -> a served image, pushed. One module per step:

    source.py         which model: a run, a model folder, or a group's best trial
    wheel.py          mnistkit's own wheel, made from the running package (the code that builds is the code served)
    builder_image.py  the builder images: Debian base made offline, wheelhouse, Dockerfile
    s2i.py            the s2i source folder and the s2i contract over the docker SDK
    verify.py         run an image on loopback; the smoke test against the model's answers
    push.py           credentials and push, errors read from the stream
    model_image.py    build_model(BuildConfig): the one call that strings them together

``docker/`` and ``s2i/`` beside these modules are package data: the Dockerfiles and the
s2i scripts the images are built from.
"""
