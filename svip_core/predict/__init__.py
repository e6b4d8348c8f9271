"""``svip predict``: rank the people of a raw video with a trained model.

- ``model_choice``: which trained model ranks (the newest full model, or the one given) and its backbone;
- ``footage``: one pass over the video: frames for the backbone, and the people's tracks (read or detected);
- ``windows``: the scoring windows, sampled at the stride training saw;
- ``scoring``: each track's VIP probability, averaged over its windows;
- ``drawing``: the annotated video;
- ``pipeline``: all of it for one video, writing the ranking files.
"""
