"""`lvm serve`: visual prompting in the browser (Gradio), on the same Session as `lvm prompt`.

service.py holds the model session and runs one generation at a time; app.py is the web page and its API.
"""
