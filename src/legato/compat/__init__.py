"""The seeds' own APIs (CoWorks, Kser, Dagger), each building Legato workflows."""
