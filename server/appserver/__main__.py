"""
C{python -m appserver}: the C{appserver} command.
"""

from appserver._cli import main

if __name__ == "__main__":
    main()
